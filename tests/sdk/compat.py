#!/usr/bin/env python3
"""Wire-compatibility check: drive taskledger through the published `scaleapi` SDK.

Uses only the `scaleapi` package (pinned in requirements.txt) and the standard library.

Environment:
  TASKLEDGER_URL                 base URL including /v1, e.g. http://127.0.0.1:8080/v1
  TASKLEDGER_CUSTOMER_KEY        customer-scope key of account A
  TASKLEDGER_OTHER_ACCOUNT_KEY   customer-scope key of a second account B
  TASKLEDGER_CONTRIBUTOR_KEY     optional contributor-scope key of account A; enables the
                                 complete + audit checks

Output: one `PASS <name>` or `FAIL <name>: <reason>` line per check (`SKIP <name>: <reason>`
for checks that cannot run in this configuration), then exactly one `N passed, M failed`
line. Exit status 1 when M > 0, 2 when the environment is incomplete.

Notes on the SDK (scaleapi 2.18.4) that shape these checks:
  * The SDK mounts its retrying adapter on https:// only, so against an http:// URL nothing
    is retried: every call is one HTTP request, and a 429/5xx surfaces immediately.
  * Only status 200 is success; any other status (201/204 included) raises.
  * A falsy body ({} or []) is sent as *no body at all* (`body = body or None`), so
    set_task_metadata(id, {}) and set_task_tags(id, []) POST an empty body.
"""

import base64
import json
import os
import re
import secrets
import sys
import traceback
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

try:
    import scaleapi
    from scaleapi.exceptions import (
        ScaleDuplicateResource,
        ScaleException,
        ScaleInvalidRequest,
        ScaleResourceNotFound,
        ScaleUnauthorized,
    )
    from scaleapi.batches import Batch, BatchStatus
    from scaleapi.projects import Project
    from scaleapi.tasks import Task, TaskReviewStatus, TaskStatus, TaskType
except ImportError as err:  # pragma: no cover
    print(f"cannot import scaleapi ({err}); pip install -r tests/sdk/requirements.txt")
    sys.exit(2)


TASK_ID_RE = re.compile(r"^[0-9a-f]{24}$")
# RFC 3339 UTC with milliseconds.
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|\+00:00)$")
LIMITED_KEYS = {"task_id", "status", "metadata", "project"}
CALLBACK_URL = "http://www.example.com/callback"


class Prerequisite(Exception):
    """A value produced by an earlier check is missing (that check failed)."""


class CheckFailed(Exception):
    pass


def ensure(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def expect_raises(exc_class, code, fn, *args, **kwargs):
    """Call fn, require it to raise exc_class with the given status code; return the error."""
    try:
        result = fn(*args, **kwargs)
    except exc_class as err:
        ensure(err.code == code, f"{exc_class.__name__} with code {err.code}, expected {code}")
        msg = str(err.message)
        ensure(
            not msg.lstrip().startswith("{"),
            f"error message is raw JSON (no \"error\" key?): {msg[:200]}",
        )
        return err
    except ScaleException as err:
        raise CheckFailed(
            f"raised {type(err).__name__} (code {err.code}): {err.message}, "
            f"expected {exc_class.__name__} ({code})"
        ) from err
    raise CheckFailed(f"no exception, expected {exc_class.__name__} ({code}); got {result!r}")


class Suite:
    def __init__(self, url, customer_key, other_key, contributor_key):
        self.url = url.rstrip("/")
        self.customer_key = customer_key
        self.other_key = other_key
        self.contributor_key = contributor_key
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.s = {}  # state shared between checks

        run = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        self.run = run
        self.project = f"sdk-proj-{run}"
        self.batch = f"sdk-batch-{run}"
        self.run_tag = f"run-{run}"
        self.cat_uid = f"sdk-{run}-cat"
        self.img_uid = f"sdk-{run}-img"

    # -- plumbing -------------------------------------------------------------------------

    def check(self, name, fn):
        try:
            fn()
        except Prerequisite as err:
            self.failed += 1
            print(f"FAIL {name}: prerequisite unavailable ({err})", flush=True)
        except CheckFailed as err:
            self.failed += 1
            print(f"FAIL {name}: {one_line(err)}", flush=True)
        except Exception as err:  # noqa: BLE001 - report anything as a failure
            self.failed += 1
            where = traceback.extract_tb(err.__traceback__)[-1]
            print(
                f"FAIL {name}: {type(err).__name__}: {one_line(err)} "
                f"(at {os.path.basename(where.filename)}:{where.lineno})",
                flush=True,
            )
        else:
            self.passed += 1
            print(f"PASS {name}", flush=True)

    def skip(self, name, reason):
        self.skipped += 1
        print(f"SKIP {name}: {reason}", flush=True)

    def need(self, key):
        if key not in self.s:
            raise Prerequisite(key)
        return self.s[key]

    def cat_payload(self, **extra):
        payload = {
            "instruction": "Would you say this item is big or small?",
            "attachment_type": "text",
            "attachment": "car",
            "categories": ["big", "small"],
            "callback_url": CALLBACK_URL,
            "project": self.project,
            "batch": self.batch,
        }
        payload.update(extra)
        if "project" in extra and "batch" not in extra:
            # A batch belongs to one project: a task of another project needs its own.
            payload["batch"] = f"{extra['project']}-batch"
        return payload

    def img_payload(self, **extra):
        payload = {
            "instruction": "Label every object in this image",
            "attachment_type": "image",
            "attachment": "https://example.com/image.jpg",
            "geometries": {"box": {"objects_to_annotate": ["vehicle", "pedestrian"]}},
            "callback_url": CALLBACK_URL,
            "project": self.project,
            "batch": self.batch,
        }
        payload.update(extra)
        if "project" in extra and "batch" not in extra:
            # A batch belongs to one project: a task of another project needs its own.
            payload["batch"] = f"{extra['project']}-batch"
        return payload

    def contributor_post(self, path, body):
        """POST as the contributor with plain urllib (the SDK has no contributor calls)."""
        token = base64.b64encode(f"{self.contributor_key}:".encode()).decode()
        req = urllib.request.Request(
            f"{self.url}/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def tasks_ids(self, **kwargs):
        page = self.client.tasks(**kwargs)
        return [t.id for t in page], page

    # -- checks ---------------------------------------------------------------------------

    def t_client(self):
        self.client = scaleapi.ScaleClient(self.customer_key, api_instance_url=self.url)
        self.other = scaleapi.ScaleClient(self.other_key, api_instance_url=self.url)
        self.s["client"] = True

    def t_create_categorization(self):
        self.need("client")
        tags = ["sdk", self.run_tag]
        metadata = {"source": "sdk-compat", "run": self.run, "n": 1}
        task = self.client.create_task(
            TaskType.Categorization,
            **self.cat_payload(unique_id=self.cat_uid, metadata=metadata, tags=tags),
        )
        ensure(isinstance(task, Task), f"create_task returned {type(task).__name__}")
        ensure(TASK_ID_RE.match(task.id or ""), f"task_id {task.id!r} is not 24 lowercase hex")
        ensure(task.status == "pending", f"status {task.status!r}, expected pending")
        ensure(task.type == "categorization", f"type {task.type!r}")
        ensure(task.unique_id == self.cat_uid, f"unique_id {task.as_dict().get('unique_id')!r}")
        self.s["cat"] = task.id
        self.s["cat_tags"] = tags
        self.s["cat_metadata"] = metadata

    def t_create_imageannotation(self):
        self.need("client")
        tags = ["sdk", self.run_tag, "image"]
        task = self.client.create_task(
            TaskType.ImageAnnotation,
            **self.img_payload(unique_id=self.img_uid, metadata={"camera": "front"}, tags=tags),
        )
        ensure(TASK_ID_RE.match(task.id or ""), f"task_id {task.id!r} is not 24 lowercase hex")
        ensure(task.status == "pending", f"status {task.status!r}, expected pending")
        ensure(task.type == "imageannotation", f"type {task.type!r}")
        ensure(task.id != self.s.get("cat"), "same task_id as the categorization task")
        self.s["img"] = task.id

    def t_create_extra(self):
        # Three more tasks in the same project (no unique_id, no tags) for pagination.
        self.need("client")
        extra = []
        for i in range(3):
            task = self.client.create_task(
                TaskType.Categorization,
                **self.cat_payload(attachment=f"item {i}", batch=f"{self.batch}-extra"),
            )
            ensure(TASK_ID_RE.match(task.id or ""), f"task_id {task.id!r}")
            d = task.as_dict()
            ensure("unique_id" not in d, f"unique_id key present without one: {d.get('unique_id')!r}")
            ensure("tags" not in d, f"tags key present without tags: {d.get('tags')!r}")
            extra.append(task.id)
        ensure(len(set(extra)) == 3, f"duplicate task ids {extra}")
        self.s["extra"] = extra

    def t_get_task_categorization(self):
        cat = self.need("cat")
        task = self.client.get_task(cat)
        d = task.as_dict()
        ensure(d.get("task_id") == cat, f"task_id {d.get('task_id')!r}, expected {cat}")
        ensure(d.get("status") == "pending", f"status {d.get('status')!r}")
        ensure(d.get("type") == "categorization", f"type {d.get('type')!r}")
        ensure(d.get("instruction") == "Would you say this item is big or small?", "instruction")
        ensure(d.get("callback_url") == CALLBACK_URL, f"callback_url {d.get('callback_url')!r}")
        ensure(d.get("project") == self.project, f"project {d.get('project')!r}")
        ensure(d.get("batch") == self.batch, f"batch {d.get('batch')!r}")
        params = d.get("params")
        ensure(isinstance(params, dict), f"params {params!r}")
        ensure(params.get("attachment") == "car", f"params.attachment {params.get('attachment')!r}")
        ensure(params.get("attachment_type") == "text", "params.attachment_type")
        ensure(params.get("categories") == ["big", "small"], f"params.categories {params.get('categories')!r}")
        ensure(d.get("metadata") == self.s["cat_metadata"], f"metadata {d.get('metadata')!r}")
        ensure(d.get("tags") == self.s["cat_tags"], f"tags {d.get('tags')!r}")
        ensure(d.get("unique_id") == self.cat_uid, f"unique_id {d.get('unique_id')!r}")
        ensure(d.get("callback_completed") is False, f"callback_completed {d.get('callback_completed')!r}")
        ensure(d.get("audits", []) == [], f"audits {d.get('audits')!r}")
        for key in ("created_at", "updated_at"):
            ensure(TIMESTAMP_RE.match(str(d.get(key))), f"{key} {d.get(key)!r} is not RFC 3339 UTC ms")
        for key in ("completed_at", "response"):
            ensure(key not in d, f"{key} present on a pending task: {d.get(key)!r}")

    def t_get_task_imageannotation(self):
        img = self.need("img")
        d = self.client.get_task(img).as_dict()
        ensure(d.get("type") == "imageannotation", f"type {d.get('type')!r}")
        params = d.get("params") or {}
        ensure(params.get("attachment") == "https://example.com/image.jpg", "params.attachment")
        box = (params.get("geometries") or {}).get("box") or {}
        ensure(
            box.get("objects_to_annotate") == ["vehicle", "pedestrian"],
            f"params.geometries {params.get('geometries')!r}",
        )
        ensure(d.get("metadata") == {"camera": "front"}, f"metadata {d.get('metadata')!r}")
        ensure(d.get("unique_id") == self.img_uid, f"unique_id {d.get('unique_id')!r}")

    def t_task_object(self):
        cat = self.need("cat")
        task = self.client.get_task(cat)
        ensure(task.id == cat and task.task_id == cat, "Task.id / attribute task_id")
        ensure(task.params["categories"] == ["big", "small"], "attribute access task.params")
        ensure(not hasattr(task, "completed_at"), "pending task exposes completed_at")
        ensure(str(task) == f"Task(id={cat})", f"str(task) {str(task)!r}")
        before = task.as_dict()
        task.refresh()
        ensure(task.as_dict() == before, "refresh() changed an untouched task")

    def t_not_found(self):
        self.need("client")
        err = expect_raises(ScaleResourceNotFound, 404, self.client.get_task, "0" * 24)
        ensure("not found" in err.message.lower(), f"message {err.message!r}")

    def t_unauthorized(self):
        cat = self.need("cat")
        bogus = scaleapi.ScaleClient("live_not_a_real_key_" + self.run, api_instance_url=self.url)
        expect_raises(ScaleUnauthorized, 401, bogus.get_task, cat)
        expect_raises(ScaleUnauthorized, 401, bogus.tasks, project=self.project)

    def t_duplicate_unique_id(self):
        cat = self.need("cat")
        err = expect_raises(
            ScaleDuplicateResource, 409,
            self.client.create_task, TaskType.Categorization,
            **self.cat_payload(unique_id=self.cat_uid),
        )
        ensure(cat in err.message, f"409 message does not name {cat}: {err.message!r}")
        ensure(self.cat_uid in err.message, f"409 message does not name the unique_id: {err.message!r}")

    def t_duplicate_unique_id_other_type(self):
        cat = self.need("cat")
        err = expect_raises(
            ScaleDuplicateResource, 409,
            self.client.create_task, TaskType.ImageAnnotation,
            **self.img_payload(unique_id=self.cat_uid, project=f"{self.project}-other"),
        )
        ensure(cat in err.message, f"409 message does not name {cat}: {err.message!r}")

    def t_invalid_create(self):
        self.need("client")
        err = expect_raises(
            ScaleInvalidRequest, 400,
            self.client.create_task, TaskType.Categorization,
            **self.cat_payload(categories=[], unique_id=f"sdk-{self.run}-invalid"),
        )
        ensure("categories" in err.message, f"400 message does not name categories: {err.message!r}")
        err = expect_raises(
            ScaleInvalidRequest, 400,
            self.client.create_task, TaskType.ImageAnnotation,
            **self.img_payload(geometries={}),
        )
        ensure("geometr" in err.message, f"400 message does not name geometries: {err.message!r}")
        expect_raises(
            ScaleInvalidRequest, 400,
            self.client.create_task, TaskType.Categorization,
            **self.cat_payload(callback_url="ftp://example.com/callback"),
        )
        # The rejected create must not have reserved its unique_id.
        ids, _ = self.tasks_ids(project=self.project, unique_id=f"sdk-{self.run}-invalid")
        ensure(ids == [], f"a rejected create left a task behind: {ids}")

    def t_list_project(self):
        cat, img, extra = self.need("cat"), self.need("img"), self.need("extra")
        ids, page = self.tasks_ids(project=self.project)
        expected = {cat, img, *extra}
        ensure(set(ids) == expected and len(ids) == len(expected), f"docs {ids}, expected {sorted(expected)}")
        ensure(page.total == 5, f"total {page.total!r}, expected 5")
        ensure(page.has_more is False, f"has_more {page.has_more!r}")
        ensure(page.offset == 0, f"offset {page.offset!r}")
        ensure(page.limit == 100, f"limit {page.limit!r}, expected default 100")
        ensure(page.next_token is None, f"next_token {page.next_token!r} on the last page")
        created = [t.created_at for t in page]
        ensure(created == sorted(created, reverse=True), f"not newest first: {created}")
        ensure(ids[0] == extra[-1], f"newest task {extra[-1]} is not first ({ids[0]})")

    def t_list_filters(self):
        cat, img, extra = self.need("cat"), self.need("img"), self.need("extra")
        cases = [
            ("type=imageannotation", dict(project=self.project, type="imageannotation"), {img}),
            ("type=categorization", dict(project=self.project, type="categorization"), {cat, *extra}),
            ("status=pending", dict(project=self.project, status="pending"), {cat, img, *extra}),
            ("status=canceled", dict(project=self.project, status="canceled"), set()),
            ("batch", dict(batch=self.batch), {cat, img}),
            ("batch-extra", dict(batch=f"{self.batch}-extra"), set(extra)),
            ("tags=image", dict(project=self.project, tags="image"), {img}),
            ("tags all-of", dict(project=self.project, tags=["sdk", self.run_tag]), {cat, img}),
            ("tags all-of none", dict(project=self.project, tags=["image", "nope"]), set()),
            ("unique_id", dict(unique_id=self.cat_uid), {cat}),
            ("unique_id any-of", dict(unique_id=[self.cat_uid, self.img_uid]), {cat, img}),
            ("start_time", dict(project=self.project,
                                start_time=(datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")),
             {cat, img, *extra}),
            ("end_time", dict(project=self.project, end_time="2000-01-01"), set()),
            ("updated_after", dict(project=self.project,
                                   updated_after=(datetime.now(timezone.utc) + timedelta(days=1))
                                   .strftime("%Y-%m-%d %H:%M:%S.%f")), set()),
            ("start_time rfc3339", dict(project=self.project, start_time="2021-04-25T03:14:15-07:00"),
             {cat, img, *extra}),
        ]
        problems = []
        for label, kwargs, want in cases:
            ids, page = self.tasks_ids(**kwargs)
            if set(ids) != want or len(ids) != len(want) or page.total != len(want):
                problems.append(f"{label}: got {ids} (total {page.total}), expected {sorted(want)}")
        ensure(not problems, "; ".join(problems))

    def t_list_bad_params(self):
        self.need("client")
        err = expect_raises(ScaleInvalidRequest, 400, self.client.tasks, project=self.project, limit=0)
        ensure("limit" in err.message, f"message does not name limit: {err.message!r}")
        expect_raises(ScaleInvalidRequest, 400, self.client.tasks, project=self.project, limit=101)
        err = expect_raises(ScaleInvalidRequest, 400, self.client.tasks,
                            project=self.project, start_time="yesterday-ish")
        ensure("start_time" in err.message, f"message does not name start_time: {err.message!r}")
        expect_raises(ScaleInvalidRequest, 400, self.client.tasks,
                      project=self.project, include_attachment_url="maybe")

    def t_list_limited_response(self):
        cat = self.need("cat")
        _, page = self.tasks_ids(project=self.project, limited_response=True)
        ensure(len(page) == 5, f"{len(page)} docs")
        for t in page:
            keys = set(t.as_dict())
            ensure("task_id" in keys and keys <= LIMITED_KEYS, f"limited doc keys {sorted(keys)}")
        doc = next((t for t in page if t.id == cat), None)
        ensure(doc is not None and doc.metadata == self.s["cat_metadata"], "limited doc metadata")

    def t_list_include_attachment_url(self):
        self.need("cat")
        _, page = self.tasks_ids(project=self.project, include_attachment_url=True)
        missing = [t.id for t in page if "attachment_url" not in t.as_dict()]
        ensure(not missing, f"attachment_url missing on {missing}")

    def t_get_tasks_paginate(self):
        cat, img, extra = self.need("cat"), self.need("img"), self.need("extra")
        expected = {cat, img, *extra}
        seen = []
        # Bounded: if has_more stays true with a null/repeating next_token the SDK loops forever.
        for task in self.client.get_tasks(project_name=self.project, limit=1):
            seen.append(task.id)
            ensure(len(seen) <= len(expected) + 3, f"get_tasks did not terminate; seen {seen}")
        dupes = sorted({i for i in seen if seen.count(i) > 1})
        ensure(not dupes, f"seen more than once: {dupes}")
        ensure(set(seen) == expected, f"seen {seen}, expected {sorted(expected)}")

    def t_get_tasks_filters(self):
        cat, img, extra = self.need("cat"), self.need("img"), self.need("extra")
        got = [t.id for t in self.client.get_tasks(
            project_name=self.project, task_type=TaskType.Categorization,
            status=TaskStatus.Pending, limit=2)]
        ensure(sorted(got) == sorted([cat, *extra]), f"categorization/pending: {got}")
        got = [t.id for t in self.client.get_tasks(batch_name=self.batch, tags=["image"])]
        ensure(got == [img], f"batch + tags: {got}")
        got = [t.id for t in self.client.get_tasks(
            project_name=self.project, unique_id=[self.cat_uid, self.img_uid],
            created_after=(datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S.%f"))]
        ensure(sorted(got) == sorted([cat, img]), f"unique_id list + created_after: {got}")
        got = [t.id for t in self.client.get_tasks(project_name=self.project, limited_response=True)]
        ensure(sorted(got) == sorted([cat, img, *extra]), f"limited_response: {got}")

    def t_manual_pagination(self):
        self.need("extra")
        pages, token, ids = 0, None, []
        while True:
            kwargs = dict(project=self.project, limit=1)
            if token is not None:
                kwargs["next_token"] = token
            page = self.client.tasks(**kwargs)
            pages += 1
            ensure(page.limit == 1, f"limit {page.limit!r}")
            ensure(page.total == 5, f"total {page.total!r} on page {pages}")
            ensure(len(page) <= 1, f"{len(page)} docs with limit=1")
            ids.extend(t.id for t in page)
            if not page.has_more:
                ensure(page.next_token is None, f"last page has next_token {page.next_token!r}")
                break
            ensure(isinstance(page.next_token, str) and page.next_token,
                   f"has_more but next_token {page.next_token!r}")
            ensure(page.next_token != token, "next_token did not advance")
            token = page.next_token
            ensure(pages <= 8, "more pages than tasks")
        ensure(pages == 5 and len(set(ids)) == 5, f"{pages} pages, ids {ids}")

    def t_pagination_stable_under_inserts(self):
        self.need("client")
        project = f"{self.project}-paging"
        made = [self.client.create_task(TaskType.Categorization,
                                        **self.cat_payload(project=project, attachment=f"p{i}")).id
                for i in range(4)]
        seen, token, made_late = [], None, None
        for step in range(10):
            kwargs = dict(project=project, limit=1)
            if token:
                kwargs["next_token"] = token
            page = self.client.tasks(**kwargs)
            seen.extend(t.id for t in page)
            if step == 1:  # insert a newer task mid-way through the walk
                made_late = self.client.create_task(
                    TaskType.Categorization, **self.cat_payload(project=project, attachment="late")).id
            if not page.has_more:
                break
            token = page.next_token
        ensure(sorted(seen) == sorted(made), f"walk saw {seen}, created {made} (+ late {made_late})")
        ensure(self.client.get_tasks_count(project_name=project) == 5, "count after the late insert")

    def t_get_tasks_count(self):
        self.need("extra")
        n = self.client.get_tasks_count(project_name=self.project)
        ensure(n == 5, f"project count {n!r}, expected 5")
        n = self.client.get_tasks_count(project_name=self.project, task_type=TaskType.ImageAnnotation)
        ensure(n == 1, f"imageannotation count {n!r}")
        n = self.client.get_tasks_count(batch_name=self.batch, tags=[self.run_tag])
        ensure(n == 2, f"batch + tag count {n!r}")
        n = self.client.get_tasks_count(project_name=self.project, status=TaskStatus.Canceled)
        ensure(n == 0, f"canceled count {n!r}")

    def t_other_account_isolation(self):
        cat = self.need("cat")
        err = expect_raises(ScaleResourceNotFound, 404, self.other.get_task, cat)
        ensure("not found" in err.message.lower(), f"message {err.message!r}")
        expect_raises(ScaleResourceNotFound, 404, self.other.set_task_metadata, cat, {"x": 1})
        expect_raises(ScaleResourceNotFound, 404, self.other.add_task_tags, cat, ["x"])
        expect_raises(ScaleResourceNotFound, 404, self.other.cancel_task, cat)
        expect_raises(ScaleResourceNotFound, 404, self.other.clear_task_unique_id, cat)
        page = self.other.tasks(project=self.project)
        ensure(len(page) == 0 and page.total == 0, f"other account lists {[t.id for t in page]}")
        ensure(self.other.get_tasks_count(project_name=self.project) == 0, "other account count")
        page = self.other.tasks(unique_id=self.cat_uid)
        ensure(len(page) == 0, "other account sees our unique_id")
        # unique_id is scoped per account: the other account may use ours.
        t = self.other.create_task(TaskType.Categorization, **self.cat_payload(unique_id=self.cat_uid))
        ensure(t.id != cat and t.unique_id == self.cat_uid, "other account create with our unique_id")
        # ... and that did not touch ours.
        ensure(self.client.get_task(cat).status == "pending", "our task changed")
        self.other.cancel_task(t.id, clear_unique_id=True)

    def t_set_task_metadata(self):
        cat = self.need("cat")
        new = {"source": "sdk-compat", "step": 2, "nested": {"a": [1, 2.5, None, True], "b": "é"}}
        task = self.client.set_task_metadata(cat, new)
        ensure(isinstance(task, Task) and task.id == cat, "set_task_metadata did not return the task")
        ensure(task.metadata == new, f"returned metadata {task.metadata!r}")
        ensure(self.client.get_task(cat).metadata == new, "metadata not persisted")
        again = self.client.set_task_metadata(cat, new)  # same value: still 200
        ensure(again.metadata == new, "re-setting the same metadata")
        t = self.client.get_task(cat)
        t.set_metadata({"via": "Task.set_metadata"})
        t.refresh()
        ensure(t.metadata == {"via": "Task.set_metadata"}, f"Task.set_metadata: {t.metadata!r}")
        self.s["metadata_ok"] = True

    def t_set_task_metadata_empty(self):
        # The SDK sends {} as an empty request body (no JSON at all).
        cat = self.need("cat")
        task = self.client.set_task_metadata(cat, {})
        ensure(task.metadata == {}, f"metadata {task.metadata!r}")
        ensure(self.client.get_task(cat).metadata == {}, "empty metadata not persisted")

    def t_set_task_metadata_invalid(self):
        cat = self.need("cat")
        err = expect_raises(ScaleInvalidRequest, 400, self.client.set_task_metadata, cat, ["not", "an", "object"])
        ensure("metadata" in err.message.lower() or "object" in err.message.lower(), f"message {err.message!r}")
        big = {"blob": "x" * 11000}
        expect_raises(ScaleInvalidRequest, 400, self.client.set_task_metadata, cat, big)

    def t_tags(self):
        cat = self.need("cat")
        base = ["sdk", self.run_tag]
        t = self.client.add_task_tags(cat, ["extra", "sdk", "more"])  # PUT: add, keep order
        ensure(t.tags == base + ["extra", "more"], f"after add: {t.as_dict().get('tags')!r}")
        t = self.client.delete_task_tags(cat, ["extra", "absent"])  # DELETE with a JSON body
        ensure(t.tags == base + ["more"], f"after delete: {t.as_dict().get('tags')!r}")
        t = self.client.set_task_tags(cat, ["b", "a", "b", "c"])  # POST: replace, dedupe
        ensure(t.tags == ["b", "a", "c"], f"after set: {t.as_dict().get('tags')!r}")
        ensure(self.client.get_task(cat).tags == ["b", "a", "c"], "set tags not persisted")
        ids, _ = self.tasks_ids(project=self.project, tags=["a", "c"])
        ensure(ids == [cat], f"list by new tags: {ids}")
        ids, _ = self.tasks_ids(project=self.project, tags="sdk")
        ensure(cat not in ids, "list still matches a removed tag")
        t = self.client.delete_task_tags(cat, ["a", "b", "c"])
        ensure("tags" not in t.as_dict(), f"tags key present after removing all: {t.as_dict().get('tags')!r}")
        # Task helpers.
        task = self.client.get_task(cat)
        task.add_tags(["x", "y"])
        task.delete_tags(["x"])
        task.refresh()
        ensure(task.tags == ["y"], f"Task.add_tags/delete_tags: {task.as_dict().get('tags')!r}")
        task.set_tags(["sdk", self.run_tag])
        task.refresh()
        ensure(task.tags == ["sdk", self.run_tag], f"Task.set_tags: {task.as_dict().get('tags')!r}")

    def t_tags_empty_set(self):
        # The SDK sends [] as an empty request body: set_task_tags(id, []) clears the tags.
        extra = self.need("extra")
        tid = extra[0]
        self.client.set_task_tags(tid, ["tmp"])
        t = self.client.set_task_tags(tid, [])
        ensure("tags" not in t.as_dict(), f"tags after set []: {t.as_dict().get('tags')!r}")

    def t_tags_invalid(self):
        cat = self.need("cat")
        expect_raises(ScaleInvalidRequest, 400, self.client.add_task_tags, cat, [""])
        expect_raises(ScaleInvalidRequest, 400, self.client.set_task_tags, cat, ["ok", 3])
        expect_raises(ScaleInvalidRequest, 400, self.client.delete_task_tags, cat, {"not": "a list"})
        expect_raises(ScaleResourceNotFound, 404, self.client.add_task_tags, "f" * 24, ["x"])

    def t_unique_id(self):
        cat, img = self.need("cat"), self.need("img")
        new_uid = f"sdk-{self.run}-cat-renamed"
        t = self.client.update_task_unique_id(cat, new_uid)
        ensure(isinstance(t, Task) and t.unique_id == new_uid, f"after update: {t.as_dict().get('unique_id')!r}")
        ensure(self.client.get_task(cat).unique_id == new_uid, "update not persisted")
        ids, _ = self.tasks_ids(unique_id=new_uid)
        ensure(ids == [cat], f"list by new unique_id: {ids}")
        ids, _ = self.tasks_ids(unique_id=self.cat_uid)
        ensure(ids == [], f"old unique_id still listed: {ids}")
        # The old one was released: it can be used again.
        reuse = self.client.create_task(TaskType.Categorization,
                                        **self.cat_payload(unique_id=self.cat_uid, project=f"{self.project}-reuse"))
        ensure(reuse.id != cat, "reuse of the released unique_id")
        # Taking another task's unique_id: 409 naming that task.
        err = expect_raises(ScaleDuplicateResource, 409, self.client.update_task_unique_id, cat, self.img_uid)
        ensure(img in err.message, f"409 does not name {img}: {err.message!r}")
        ensure(self.client.get_task(cat).unique_id == new_uid, "failed update changed the unique_id")
        # Clear (twice: idempotent).
        t = self.client.clear_task_unique_id(cat)
        ensure("unique_id" not in t.as_dict(), f"unique_id key after clear: {t.as_dict().get('unique_id')!r}")
        t = self.client.clear_task_unique_id(cat)
        ensure("unique_id" not in t.as_dict(), "second clear")
        ensure("unique_id" not in self.client.get_task(cat).as_dict(), "clear not persisted")
        ids, _ = self.tasks_ids(unique_id=new_uid)
        ensure(ids == [], f"cleared unique_id still listed: {ids}")
        # Task helpers.
        task = self.client.get_task(cat)
        task.update_unique_id(self.cat_uid + "-again")
        task.refresh()
        ensure(task.unique_id == self.cat_uid + "-again", "Task.update_unique_id")
        task.clear_unique_id()
        task.refresh()
        ensure("unique_id" not in task.as_dict(), "Task.clear_unique_id")
        self.client.cancel_task(reuse.id, clear_unique_id=True)

    def t_cancel_clear_unique_id(self):
        img = self.need("img")
        t = self.client.cancel_task(img, clear_unique_id=True)
        ensure(isinstance(t, Task) and t.status == "canceled", f"status {t.as_dict().get('status')!r}")
        ensure("unique_id" not in t.as_dict(), f"unique_id still {t.as_dict().get('unique_id')!r}")
        got = self.client.get_task(img)
        ensure(got.status == "canceled" and "unique_id" not in got.as_dict(), "cancel not persisted")
        new = self.client.create_task(TaskType.ImageAnnotation, **self.img_payload(unique_id=self.img_uid))
        ensure(new.id != img and new.unique_id == self.img_uid, "re-create with the released unique_id")
        again = self.client.cancel_task(img)  # idempotent
        ensure(again.status == "canceled", "second cancel")
        ids, _ = self.tasks_ids(project=self.project, status="canceled")
        ensure(img in ids, f"status=canceled filter: {ids}")
        self.s["img2"] = new.id

    def t_cancel_keeps_unique_id(self):
        img2 = self.need("img2")
        task = self.client.get_task(img2)
        task.cancel()  # Task.cancel(), clear_unique_id=False
        task.refresh()
        ensure(task.status == "canceled", f"status {task.status!r}")
        ensure(task.unique_id == self.img_uid, "unique_id dropped without clear_unique_id")
        err = expect_raises(ScaleDuplicateResource, 409, self.client.create_task,
                            TaskType.ImageAnnotation, **self.img_payload(unique_id=self.img_uid))
        ensure(img2 in err.message, f"409 does not name {img2}: {err.message!r}")
        # Canceling again with clear_unique_id=true still clears it.
        t = self.client.cancel_task(img2, clear_unique_id=True)
        ensure(t.status == "canceled" and "unique_id" not in t.as_dict(), "cancel again with clear")

    def t_complete_and_audit(self):
        self.need("client")
        accepted = self.client.create_task(TaskType.Categorization,
                                           **self.cat_payload(project=f"{self.project}-audit"))
        rejected = self.client.create_task(TaskType.Categorization,
                                           **self.cat_payload(project=f"{self.project}-audit"))
        # Auditing a pending task is refused.
        expect_raises(ScaleInvalidRequest, 400, self.client.audit_task, accepted.id, True, None)
        for t in (accepted, rejected):
            status, body = self.contributor_post(f"task/{t.id}/complete", {"response": {"category": "big"}})
            ensure(status == 200, f"contributor complete of {t.id}: HTTP {status} {body[:200]}")
        done = self.client.get_task(accepted.id)
        ensure(done.status == "completed", f"status {done.status!r}")
        ensure(done.response == {"category": "big"}, f"response {done.as_dict().get('response')!r}")
        ensure(TIMESTAMP_RE.match(str(done.as_dict().get("completed_at"))), "completed_at")
        ensure(done.as_dict().get("customer_review_status") == "pending",
               f"customer_review_status {done.as_dict().get('customer_review_status')!r} before audit")
        # Completed tasks cannot be canceled.
        expect_raises(ScaleInvalidRequest, 400, self.client.cancel_task, accepted.id)

        ret = self.client.audit_task(accepted.id, True, "looks right")
        ensure(ret is None, "audit_task returns None")
        d = self.client.get_task(accepted.id).as_dict()
        ensure(d.get("customer_review_status") == "accepted", f"customer_review_status {d.get('customer_review_status')!r}")
        audits = d.get("audits") or []
        ensure(len(audits) == 1, f"audits {audits!r}")
        a = audits[0]
        ensure(a.get("audit_source") == "customer" and a.get("audit_result") == "accepted", f"audit {a!r}")
        ensure(TIMESTAMP_RE.match(str(a.get("audited_at"))), f"audited_at {a.get('audited_at')!r}")

        task = self.client.get_task(rejected.id)
        task.audit(False, "wrong category")  # Task.audit
        task.refresh()
        ensure(task.customer_review_status == "rejected", f"customer_review_status {task.customer_review_status!r}")
        ensure([x.get("audit_result") for x in task.audits] == ["rejected"], f"audits {task.audits!r}")

        project = f"{self.project}-audit"
        got = [t.id for t in self.client.get_tasks(project_name=project, review_status=TaskReviewStatus.Accepted)]
        ensure(got == [accepted.id], f"review_status=accepted: {got}")
        got = [t.id for t in self.client.get_tasks(
            project_name=project, review_status=[TaskReviewStatus.Accepted, TaskReviewStatus.Rejected])]
        ensure(sorted(got) == sorted([accepted.id, rejected.id]), f"review_status=accepted,rejected: {got}")
        got = [t.id for t in self.client.get_tasks(project_name=project, status=TaskStatus.Completed,
                                                   completed_after="2000-01-01")]
        ensure(sorted(got) == sorted([accepted.id, rejected.id]), f"status=completed + completed_after: {got}")
        ids, _ = self.tasks_ids(project=project, completed_before="2000-01-01")
        ensure(ids == [], f"completed_before 2000: {ids}")

    # -- projects and batches ---------------------------------------------------------------

    def t_projects(self):
        self.need("client")
        name = f"sdk-projects-{self.run}"
        params = {"instruction": "Label the kittens", "categories": ["cat", "dog"]}
        project = self.client.create_project(name, TaskType.Categorization, params)
        ensure(isinstance(project, Project), f"create_project gave {project!r}")
        ensure(project.name == name and project.type == "categorization", f"{project!r}")
        ensure(project.version == 1, f"version {project.version!r}")
        ensure(project.instruction == "Label the kittens", f"instruction {project.instruction!r}")
        expect_raises(ScaleDuplicateResource, 409, self.client.create_project,
                      name, TaskType.Categorization)
        got = self.client.get_project(name)
        ensure(got.as_dict() == project.as_dict(), f"get_project {got!r}")
        names = [p.name for p in self.client.projects()]
        ensure(name in names, f"projects() {names}")
        ensure(name in [p.name for p in self.client.get_projects()], "get_projects()")
        # Each version holds the params given with it, whole.
        updated = self.client.update_project(
            name, instruction="Label every kitten", categories=["cat", "dog"])
        ensure(updated.version == 2, f"update_project version {updated.version!r}")
        ensure(updated.instruction == "Label every kitten", f"{updated.instruction!r}")
        ensure(updated.params.get("instruction") == "Label every kitten", f"{updated.params!r}")
        expect_raises(ScaleResourceNotFound, 404, self.client.get_project, f"{name}-missing")
        task = self.client.create_task(
            TaskType.Categorization, project=name, attachment_type="text", attachment="a cat")
        ensure(task.instruction == "Label every kitten", f"inherited instruction {task.instruction!r}")
        ensure(task.params.get("categories") == ["cat", "dog"], f"inherited params {task.params!r}")
        names = [p.name for p in self.other.projects()]
        ensure(name not in names, "another account sees the project")
        self.s["sdk_project"] = name

    def t_batches(self):
        project = self.need("sdk_project")
        name = f"sdk-batches-{self.run}"
        batch = self.client.create_batch(project, name, metadata={"owner": "dana"})
        ensure(isinstance(batch, Batch), f"create_batch gave {batch!r}")
        ensure(batch.status == "staging" and batch.project == project, f"{batch!r}")
        ensure(batch.metadata == {"owner": "dana"}, f"metadata {batch.metadata!r}")
        expect_raises(ScaleDuplicateResource, 409, self.client.create_batch, project, name)
        ensure(self.client.get_batch(name).name == name, "get_batch")
        ids = [
            self.client.create_task(TaskType.Categorization, project=project, batch=name,
                                    attachment_type="text", attachment=f"item {i}").id
            for i in range(2)
        ]
        status = self.client.batch_status(name)
        ensure(status.get("status") == "staging" and status.get("pending") == 2, f"{status!r}")
        updated = self.client.set_batch_metadata(name, {"owner": "lee"})
        ensure(updated.metadata == {"owner": "lee"}, f"set_batch_metadata {updated.metadata!r}")
        second = f"{name}-2"
        self.client.create_batch(project, second)
        page = self.client.batches(project=project, limit=1, offset=1)
        ensure(page.total == 2 and page.limit == 1 and page.offset == 1, f"batches() {page.__dict__!r}")
        ensure([b.name for b in page.docs] == [second] and page.has_more is False, f"{page.docs!r}")
        every = [b.name for b in self.client.get_batches(project_name=project)]
        ensure(every == [name, second], f"get_batches {every}")
        finalized = batch.finalize()
        ensure(finalized.status == "in_progress" and batch.status == "in_progress", f"{finalized!r}")
        staging = [b.name for b in self.client.get_batches(
            project_name=project, batch_status=BatchStatus.Staging)]
        ensure(staging == [second], f"get_batches(staging) {staging}")
        late = expect_raises(ScaleInvalidRequest, 400, self.client.create_task, TaskType.Categorization,
                             project=project, batch=name, attachment_type="text", attachment="late")
        ensure(name in str(late.message) and "in_progress" in str(late.message), f"{late.message}")
        if self.contributor_key:
            for task_id in ids:
                code, body = self.contributor_post(f"task/{task_id}/complete",
                                                   {"response": {"category": "cat"}})
                ensure(code == 200, f"complete {code} {body[:200]}")
            batch.get_status()
            ensure(batch.status == "completed" and batch.tasks_completed == 2,
                   f"get_status {batch.status!r} {batch.tasks_completed!r}")
            done = [b.name for b in self.client.get_batches(
                project_name=project, batch_status=BatchStatus.Completed)]
            ensure(done == [name], f"get_batches(completed) {done}")
        other = self.other.batches(project=project)
        ensure(other.total == 0, "another account sees the batch")

    # -- driver ---------------------------------------------------------------------------

    def run_all(self):
        self.check("client_init", self.t_client)
        self.check("create_task_categorization", self.t_create_categorization)
        self.check("create_task_imageannotation", self.t_create_imageannotation)
        self.check("create_task_more", self.t_create_extra)
        self.check("get_task_categorization", self.t_get_task_categorization)
        self.check("get_task_imageannotation", self.t_get_task_imageannotation)
        self.check("task_object", self.t_task_object)
        self.check("get_task_not_found", self.t_not_found)
        self.check("unauthorized_key", self.t_unauthorized)
        self.check("create_duplicate_unique_id", self.t_duplicate_unique_id)
        self.check("create_duplicate_unique_id_other_type", self.t_duplicate_unique_id_other_type)
        self.check("create_invalid", self.t_invalid_create)
        self.check("tasks_list_project", self.t_list_project)
        self.check("tasks_list_filters", self.t_list_filters)
        self.check("tasks_list_bad_params", self.t_list_bad_params)
        self.check("tasks_limited_response", self.t_list_limited_response)
        self.check("tasks_include_attachment_url", self.t_list_include_attachment_url)
        self.check("get_tasks_paginate_limit_1", self.t_get_tasks_paginate)
        self.check("get_tasks_filters", self.t_get_tasks_filters)
        self.check("tasks_manual_next_token", self.t_manual_pagination)
        self.check("tasks_pagination_stable_under_inserts", self.t_pagination_stable_under_inserts)
        self.check("get_tasks_count", self.t_get_tasks_count)
        self.check("other_account_isolation", self.t_other_account_isolation)
        self.check("set_task_metadata", self.t_set_task_metadata)
        self.check("set_task_metadata_empty_body", self.t_set_task_metadata_empty)
        self.check("set_task_metadata_invalid", self.t_set_task_metadata_invalid)
        self.check("task_tags", self.t_tags)
        self.check("set_task_tags_empty_body", self.t_tags_empty_set)
        self.check("task_tags_invalid", self.t_tags_invalid)
        self.check("task_unique_id", self.t_unique_id)
        self.check("cancel_task_clear_unique_id", self.t_cancel_clear_unique_id)
        self.check("cancel_task_keeps_unique_id", self.t_cancel_keeps_unique_id)
        self.check("projects", self.t_projects)
        self.check("batches", self.t_batches)
        if self.contributor_key:
            self.check("complete_and_audit_task", self.t_complete_and_audit)
        else:
            self.skip("complete_and_audit_task", "TASKLEDGER_CONTRIBUTOR_KEY not set")
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed else 0


def one_line(err, limit=600):
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def main():
    env = {k: os.environ.get(k, "").strip() for k in (
        "TASKLEDGER_URL", "TASKLEDGER_CUSTOMER_KEY", "TASKLEDGER_OTHER_ACCOUNT_KEY",
        "TASKLEDGER_CONTRIBUTOR_KEY")}
    missing = [k for k in ("TASKLEDGER_URL", "TASKLEDGER_CUSTOMER_KEY", "TASKLEDGER_OTHER_ACCOUNT_KEY")
               if not env[k]]
    if missing:
        print(f"missing environment: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(f"scaleapi {scaleapi.__version__} against {env['TASKLEDGER_URL']}", flush=True)
    suite = Suite(env["TASKLEDGER_URL"], env["TASKLEDGER_CUSTOMER_KEY"],
                  env["TASKLEDGER_OTHER_ACCOUNT_KEY"], env["TASKLEDGER_CONTRIBUTOR_KEY"] or None)
    return suite.run_all()


if __name__ == "__main__":
    sys.exit(main())
