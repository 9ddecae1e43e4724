"""An auditor's check, independent of taskledger's code: fetch the account's signed digest,
check its Ed25519 signature with the published key, then check that one event is in the
signed tree with an RFC 9162 inclusion proof. Prints "verified" and exits 0, or exits 1.

Usage: TASKLEDGER_URL=http://127.0.0.1:8080 TASKLEDGER_KEY=tl_... python3 verify_digest.py EVENT_ID
"""
import base64, hashlib, json, os, sys, urllib.request
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

def get(path):
    auth = base64.b64encode((os.environ["TASKLEDGER_KEY"] + ":").encode()).decode()
    req = urllib.request.Request(os.environ["TASKLEDGER_URL"] + path, headers={"Authorization": "Basic " + auth})
    return json.load(urllib.request.urlopen(req))

H = lambda *parts: hashlib.sha256(b"".join(parts)).digest()
digest = get("/v1/ledger/digest")
key = next(k for k in get("/v1/ledger/public-keys")["keys"] if k["key_id"] == digest["key_id"])
Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["public_key"])).verify(
    bytes.fromhex(digest["signature"]), digest["signed_message"].encode())  # raises if forged
assert f"root_hash={digest['root_hash']}" in digest["signed_message"].splitlines()
event_id = sys.argv[1]
proof = get(f"/v1/ledger/proof/inclusion?event_id={event_id}&tree_size={digest['tree_size']}")
event = next(e for e in get(f"/v1/events?limit=1000")["events"] if e["event_id"] == event_id)
fn, sn, r = proof["leaf_index"], proof["tree_size"] - 1, H(b"\x00", bytes.fromhex(event["hash"]))
for p in map(bytes.fromhex, proof["audit_path"]):  # RFC 9162 section 2.1.3.2
    if fn & 1 or fn == sn:
        r = H(b"\x01", p, r)
        while not fn & 1 and fn:
            fn, sn = fn >> 1, sn >> 1
    else:
        r = H(b"\x01", r, p)
    fn, sn = fn >> 1, sn >> 1
assert sn == 0 and r.hex() == digest["root_hash"], "the proof does not lead to the signed root"
print("verified")
