//! The task types this ledger accepts, one enum instead of a hand-kept list.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::values::{preview, Params, ValueError};

/// The task types this ledger accepts: every `TaskType` of the reference SDK (`scaleapi`
/// 2.18.4). What each requires of its params is one row of [`TYPE_RULES`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    Annotation,
    #[default]
    Categorization,
    Comparison,
    CuboidAnnotation,
    DataCollection,
    DocumentModel,
    DocumentTranscription,
    ImageAnnotation,
    LaneAnnotation,
    LidarAnnotation,
    LidarLinking,
    LidarSegmentation,
    LidarTopdown,
    LineAnnotation,
    NamedEntityRecognition,
    PointAnnotation,
    PolygonAnnotation,
    SegmentAnnotation,
    Transcription,
    TextCollection,
    VideoAnnotation,
    VideoBoxAnnotation,
    VideoPlaybackAnnotation,
    VideoCuboidAnnotation,
    SensorFusion,
    Chat,
    ChatExperimental,
    ChatLite,
    MultiChat,
    MultiStage,
    Federal2dVideoAnnotation,
}

/// What a type's params must hold; the README's table and `/openapi.json` are written from
/// these, so the documents and the validation cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A non-empty string.
    Text(&'static str),
    /// A non-empty array.
    List(&'static str),
    /// `categories`: a non-empty array of non-empty strings or objects.
    Categories,
    /// `geometries`: an object with at least one geometry whose `objects_to_annotate` is a
    /// non-empty array.
    Geometries,
    /// At least one of these.
    AnyOf(&'static [Requirement]),
}

use Requirement::{AnyOf, Categories, Geometries, List, Text};

/// One row of the rules: a type, what its params must hold, and a valid example (used by the
/// tests and shown in the README).
#[derive(Debug, Clone, Copy)]
pub struct TypeRules {
    pub task_type: TaskType,
    pub requires: &'static [Requirement],
    /// What the attachments are, where that is worth saying.
    pub note: &'static str,
    pub example: &'static str,
}

/// The rules, one row per type, in the order of [`TaskType::ALL`]. Where the reference
/// documents nothing more for a type, it needs an attachment (`attachment` or `attachments`),
/// as the reference's general rule says. Every type may also carry `attachment_type` (a
/// string) and any other params, which are kept as sent.
pub const TYPE_RULES: [TypeRules; 31] = [
    TypeRules {
        task_type: TaskType::Annotation,
        requires: &[Text("attachment"), List("objects_to_annotate")],
        note: "legacy box annotation",
        example: r#"{"attachment": "https://example.com/i.jpg", "objects_to_annotate": ["car"]}"#,
    },
    TypeRules {
        task_type: TaskType::Categorization,
        requires: &[Text("attachment"), Text("attachment_type"), Categories],
        note: "",
        example: r#"{"attachment": "car", "attachment_type": "text", "categories": ["big", "small"]}"#,
    },
    TypeRules {
        task_type: TaskType::Comparison,
        requires: &[List("attachments")],
        note: "the attachments to compare",
        example: r#"{"attachments": ["https://example.com/a.jpg", "https://example.com/b.jpg"]}"#,
    },
    TypeRules {
        task_type: TaskType::CuboidAnnotation,
        requires: &[Text("attachment"), List("objects_to_annotate")],
        note: "legacy 2D cuboids",
        example: r#"{"attachment": "https://example.com/i.jpg", "objects_to_annotate": ["car"]}"#,
    },
    TypeRules {
        task_type: TaskType::DataCollection,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/site"}"#,
    },
    TypeRules {
        task_type: TaskType::DocumentModel,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/d.pdf"}"#,
    },
    TypeRules {
        task_type: TaskType::DocumentTranscription,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/d.pdf"}"#,
    },
    TypeRules {
        task_type: TaskType::ImageAnnotation,
        requires: &[Text("attachment"), Geometries],
        note: "",
        example: r#"{"attachment": "https://example.com/i.jpg", "geometries": {"box": {"objects_to_annotate": ["car"]}}}"#,
    },
    TypeRules {
        task_type: TaskType::LaneAnnotation,
        requires: &[Text("attachment"), List("objects_to_annotate")],
        note: "legacy lanes",
        example: r#"{"attachment": "https://example.com/i.jpg", "objects_to_annotate": ["lane"]}"#,
    },
    TypeRules {
        task_type: TaskType::LidarAnnotation,
        requires: &[List("attachments"), List("labels")],
        note: "the frames, in order",
        example: r#"{"attachments": ["https://example.com/frame1.json"], "labels": ["car"]}"#,
    },
    TypeRules {
        task_type: TaskType::LidarLinking,
        requires: &[List("attachments")],
        note: "the frames, in order",
        example: r#"{"attachments": ["https://example.com/frame1.json"]}"#,
    },
    TypeRules {
        task_type: TaskType::LidarSegmentation,
        requires: &[List("attachments"), List("labels")],
        note: "the frames, in order",
        example: r#"{"attachments": ["https://example.com/frame1.json"], "labels": ["road", "car"]}"#,
    },
    TypeRules {
        task_type: TaskType::LidarTopdown,
        requires: &[List("attachments")],
        note: "the frames, in order",
        example: r#"{"attachments": ["https://example.com/frame1.json"]}"#,
    },
    TypeRules {
        task_type: TaskType::LineAnnotation,
        requires: &[Text("attachment"), List("objects_to_annotate")],
        note: "legacy lines",
        example: r#"{"attachment": "https://example.com/i.jpg", "objects_to_annotate": ["wire"]}"#,
    },
    TypeRules {
        task_type: TaskType::NamedEntityRecognition,
        requires: &[Text("text"), List("labels")],
        note: "",
        example: r#"{"text": "Dana met Lee in Paris.", "labels": ["person", "place"]}"#,
    },
    TypeRules {
        task_type: TaskType::PointAnnotation,
        requires: &[Text("attachment"), List("objects_to_annotate")],
        note: "legacy points",
        example: r#"{"attachment": "https://example.com/i.jpg", "objects_to_annotate": ["eye"]}"#,
    },
    TypeRules {
        task_type: TaskType::PolygonAnnotation,
        requires: &[Text("attachment"), List("objects_to_annotate")],
        note: "legacy polygons",
        example: r#"{"attachment": "https://example.com/i.jpg", "objects_to_annotate": ["roof"]}"#,
    },
    TypeRules {
        task_type: TaskType::SegmentAnnotation,
        requires: &[Text("attachment"), List("labels")],
        note: "",
        example: r#"{"attachment": "https://example.com/i.jpg", "labels": ["sky", "road"]}"#,
    },
    TypeRules {
        task_type: TaskType::Transcription,
        requires: &[Text("attachment")],
        note: "",
        example: r#"{"attachment": "https://example.com/scan.png"}"#,
    },
    TypeRules {
        task_type: TaskType::TextCollection,
        requires: &[AnyOf(&[
            Text("attachment"),
            List("attachments"),
            List("fields"),
        ])],
        note: "",
        example: r#"{"fields": [{"field_id": "name", "title": "Name"}]}"#,
    },
    TypeRules {
        task_type: TaskType::VideoAnnotation,
        requires: &[
            AnyOf(&[Text("attachment"), List("attachments")]),
            Geometries,
        ],
        note: "a video, or its frames",
        example: r#"{"attachments": ["https://example.com/f1.jpg", "https://example.com/f2.jpg"], "geometries": {"box": {"objects_to_annotate": ["car"]}}}"#,
    },
    TypeRules {
        task_type: TaskType::VideoBoxAnnotation,
        requires: &[
            AnyOf(&[Text("attachment"), List("attachments")]),
            List("objects_to_annotate"),
        ],
        note: "legacy video boxes",
        example: r#"{"attachments": ["https://example.com/f1.jpg", "https://example.com/f2.jpg"], "objects_to_annotate": ["car"]}"#,
    },
    TypeRules {
        task_type: TaskType::VideoPlaybackAnnotation,
        requires: &[
            AnyOf(&[Text("attachment"), List("attachments")]),
            Geometries,
        ],
        note: "a video, or its frames",
        example: r#"{"attachment": "https://example.com/v.mp4", "geometries": {"box": {"objects_to_annotate": ["car"]}}}"#,
    },
    TypeRules {
        task_type: TaskType::VideoCuboidAnnotation,
        requires: &[
            AnyOf(&[Text("attachment"), List("attachments")]),
            Geometries,
        ],
        note: "a video, or its frames",
        example: r#"{"attachments": ["https://example.com/f1.jpg", "https://example.com/f2.jpg"], "geometries": {"cuboid": {"objects_to_annotate": ["car"]}}}"#,
    },
    TypeRules {
        task_type: TaskType::SensorFusion,
        requires: &[List("attachments")],
        note: "the frames, in order",
        example: r#"{"attachments": ["https://example.com/frame1.json"]}"#,
    },
    TypeRules {
        task_type: TaskType::Chat,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/prompt.txt"}"#,
    },
    TypeRules {
        task_type: TaskType::ChatExperimental,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/prompt.txt"}"#,
    },
    TypeRules {
        task_type: TaskType::ChatLite,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/prompt.txt"}"#,
    },
    TypeRules {
        task_type: TaskType::MultiChat,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachments": ["https://example.com/a.txt", "https://example.com/b.txt"]}"#,
    },
    TypeRules {
        task_type: TaskType::MultiStage,
        requires: &[AnyOf(&[Text("attachment"), List("attachments")])],
        note: "",
        example: r#"{"attachment": "https://example.com/i.jpg"}"#,
    },
    TypeRules {
        task_type: TaskType::Federal2dVideoAnnotation,
        requires: &[
            AnyOf(&[Text("attachment"), List("attachments")]),
            Geometries,
        ],
        note: "a video, or its frames",
        example: r#"{"attachments": ["https://example.com/f1.jpg", "https://example.com/f2.jpg"], "geometries": {"box": {"objects_to_annotate": ["car"]}}}"#,
    },
];

impl TaskType {
    pub const ALL: [TaskType; 31] = [
        TaskType::Annotation,
        TaskType::Categorization,
        TaskType::Comparison,
        TaskType::CuboidAnnotation,
        TaskType::DataCollection,
        TaskType::DocumentModel,
        TaskType::DocumentTranscription,
        TaskType::ImageAnnotation,
        TaskType::LaneAnnotation,
        TaskType::LidarAnnotation,
        TaskType::LidarLinking,
        TaskType::LidarSegmentation,
        TaskType::LidarTopdown,
        TaskType::LineAnnotation,
        TaskType::NamedEntityRecognition,
        TaskType::PointAnnotation,
        TaskType::PolygonAnnotation,
        TaskType::SegmentAnnotation,
        TaskType::Transcription,
        TaskType::TextCollection,
        TaskType::VideoAnnotation,
        TaskType::VideoBoxAnnotation,
        TaskType::VideoPlaybackAnnotation,
        TaskType::VideoCuboidAnnotation,
        TaskType::SensorFusion,
        TaskType::Chat,
        TaskType::ChatExperimental,
        TaskType::ChatLite,
        TaskType::MultiChat,
        TaskType::MultiStage,
        TaskType::Federal2dVideoAnnotation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Annotation => "annotation",
            TaskType::Categorization => "categorization",
            TaskType::Comparison => "comparison",
            TaskType::CuboidAnnotation => "cuboidannotation",
            TaskType::DataCollection => "datacollection",
            TaskType::DocumentModel => "documentmodel",
            TaskType::DocumentTranscription => "documenttranscription",
            TaskType::ImageAnnotation => "imageannotation",
            TaskType::LaneAnnotation => "laneannotation",
            TaskType::LidarAnnotation => "lidarannotation",
            TaskType::LidarLinking => "lidarlinking",
            TaskType::LidarSegmentation => "lidarsegmentation",
            TaskType::LidarTopdown => "lidartopdown",
            TaskType::LineAnnotation => "lineannotation",
            TaskType::NamedEntityRecognition => "namedentityrecognition",
            TaskType::PointAnnotation => "pointannotation",
            TaskType::PolygonAnnotation => "polygonannotation",
            TaskType::SegmentAnnotation => "segmentannotation",
            TaskType::Transcription => "transcription",
            TaskType::TextCollection => "textcollection",
            TaskType::VideoAnnotation => "videoannotation",
            TaskType::VideoBoxAnnotation => "videoboxannotation",
            TaskType::VideoPlaybackAnnotation => "videoplaybackannotation",
            TaskType::VideoCuboidAnnotation => "videocuboidannotation",
            TaskType::SensorFusion => "sensorfusion",
            TaskType::Chat => "chat",
            TaskType::ChatExperimental => "chatexperimental",
            TaskType::ChatLite => "chatlite",
            TaskType::MultiChat => "multichat",
            TaskType::MultiStage => "multistage",
            TaskType::Federal2dVideoAnnotation => "federal2dvideoannotation",
        }
    }

    pub fn parse(s: &str) -> Result<TaskType, ValueError> {
        TaskType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                ValueError(format!(
                    "Unknown task type {}; expected one of {}",
                    preview(s),
                    TaskType::ALL.map(TaskType::as_str).join(", ")
                ))
            })
    }

    /// The type's row of [`TYPE_RULES`].
    pub fn rules(self) -> &'static TypeRules {
        &TYPE_RULES[self as usize]
    }

    /// The rules of the type's own fields; the message names the field.
    pub fn check_params(self, params: &Params) -> Result<(), String> {
        let params = params.as_map();
        optional_string(params, "attachment_type")?;
        self.rules()
            .requires
            .iter()
            .try_for_each(|r| r.check(params))
    }
}

impl Requirement {
    fn holds(self, params: &Map<String, Value>) -> bool {
        self.check(params).is_ok()
    }

    fn check(self, params: &Map<String, Value>) -> Result<(), String> {
        match self {
            Text(field) => match params.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
                _ => Err(format!(
                    "{field} is required and must be a non-empty string"
                )),
            },
            List(field) => match params.get(field) {
                Some(Value::Array(items)) if !items.is_empty() => Ok(()),
                _ => Err(format!("{field} is required and must be a non-empty array")),
            },
            Categories => match params.get("categories") {
                Some(Value::Array(items)) if !items.is_empty() => {
                    if items.iter().all(is_category) {
                        Ok(())
                    } else {
                        Err("categories must hold non-empty strings or objects".into())
                    }
                }
                _ => Err("categories must be a non-empty array".into()),
            },
            Geometries => {
                let Some(Value::Object(geometries)) = params.get("geometries") else {
                    return Err("geometries must be an object with at least one geometry".into());
                };
                let usable = geometries.values().any(
                    |g| matches!(g.get("objects_to_annotate"), Some(Value::Array(o)) if !o.is_empty()),
                );
                if usable {
                    Ok(())
                } else {
                    Err(
                        "geometries must hold at least one geometry with a non-empty \
                         objects_to_annotate"
                            .into(),
                    )
                }
            }
            AnyOf(options) => {
                if options.iter().any(|o| o.holds(params)) {
                    Ok(())
                } else {
                    let names: Vec<String> = options.iter().map(|o| o.describe()).collect();
                    Err(format!("{} is required", names.join(" or ")))
                }
            }
        }
    }

    /// In words, for error messages and the documents.
    pub fn describe(self) -> String {
        match self {
            Text(field) => format!("{field} (a non-empty string)"),
            List(field) => format!("{field} (a non-empty array)"),
            Categories => "categories (a non-empty array of strings or objects)".into(),
            Geometries => {
                "geometries (at least one geometry with a non-empty objects_to_annotate)".into()
            }
            AnyOf(options) => {
                let names: Vec<String> = options.iter().map(|o| o.describe()).collect();
                format!("one of: {}", names.join(", "))
            }
        }
    }
}

/// The README's table of task types, written from [`TYPE_RULES`]; a test keeps the README's
/// copy equal to it.
pub fn rules_markdown() -> String {
    let mut table = String::from("| type | params must hold | note |\n|---|---|---|\n");
    for row in TYPE_RULES {
        let needs: Vec<String> = row.requires.iter().map(|r| r.describe()).collect();
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
            row.task_type.as_str(),
            needs.join("; "),
            row.note
        ));
    }
    table
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_category(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(_) => true,
        _ => false,
    }
}

fn optional_string(params: &Map<String, Value>, field: &str) -> Result<(), String> {
    match params.get(field) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

impl TryFrom<&str> for TaskType {
    type Error = ValueError;
    fn try_from(s: &str) -> Result<Self, ValueError> {
        TaskType::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Params {
        let Value::Object(map) = serde_json::from_str(json).expect("an example is JSON") else {
            panic!("an example is an object: {json}");
        };
        Params::parse(map).expect("an example's params are valid values")
    }

    impl Requirement {
        /// The params a requirement looks at.
        fn fields(self) -> Vec<&'static str> {
            match self {
                Text(f) | List(f) => vec![f],
                Categories => vec!["categories"],
                Geometries => vec!["geometries"],
                AnyOf(options) => options.iter().flat_map(|o| o.fields()).collect(),
            }
        }
    }

    #[test]
    fn the_rules_hold_one_row_per_type_in_the_order_of_all() {
        assert_eq!(TYPE_RULES.len(), TaskType::ALL.len());
        for (i, t) in TaskType::ALL.into_iter().enumerate() {
            assert_eq!(TYPE_RULES[i].task_type, t);
            assert_eq!(t as usize, i, "rules() indexes by the discriminant");
            assert_eq!(t.rules().task_type, t);
        }
    }

    #[test]
    fn every_types_example_is_accepted() {
        for row in TYPE_RULES {
            assert_eq!(
                row.task_type.check_params(&params(row.example)),
                Ok(()),
                "{}",
                row.task_type
            );
        }
    }

    #[test]
    fn leaving_out_any_required_param_is_refused_naming_it() {
        for row in TYPE_RULES {
            for requirement in row.requires {
                let Value::Object(mut map) = serde_json::from_str(row.example).unwrap() else {
                    unreachable!()
                };
                for field in requirement.fields() {
                    map.remove(field);
                }
                let refused = row
                    .task_type
                    .check_params(&Params::parse(map).unwrap())
                    .expect_err(&format!("{} without {requirement:?}", row.task_type));
                assert!(
                    requirement.fields().iter().any(|f| refused.contains(f)),
                    "{}: {refused:?} names {:?}",
                    row.task_type,
                    requirement.fields()
                );
            }
        }
    }

    #[test]
    fn empty_strings_and_empty_arrays_do_not_count() {
        let refused = TaskType::SegmentAnnotation
            .check_params(&params(r#"{"attachment": "x", "labels": []}"#))
            .unwrap_err();
        assert!(refused.contains("labels"), "{refused}");
        let refused = TaskType::NamedEntityRecognition
            .check_params(&params(r#"{"text": "  ", "labels": ["a"]}"#))
            .unwrap_err();
        assert!(refused.contains("text"), "{refused}");
    }

    #[test]
    fn every_sdk_task_type_parses_by_its_name() {
        // The values of `scaleapi.tasks.TaskType` in 2.18.4.
        let sdk = "annotation categorization comparison cuboidannotation datacollection \
            documentmodel documenttranscription imageannotation laneannotation lidarannotation \
            lidarlinking lidarsegmentation lidartopdown lineannotation namedentityrecognition \
            pointannotation polygonannotation segmentannotation transcription textcollection \
            videoannotation videoboxannotation videoplaybackannotation videocuboidannotation \
            sensorfusion chat chatexperimental chatlite multichat multistage \
            federal2dvideoannotation";
        for name in sdk.split_whitespace() {
            let t = TaskType::parse(name).unwrap();
            assert_eq!(t.as_str(), name);
            assert_eq!(serde_json::to_value(t).unwrap(), Value::from(name));
        }
        assert_eq!(sdk.split_whitespace().count(), TaskType::ALL.len());
    }

    #[test]
    fn an_unknown_type_is_refused_listing_the_known_ones() {
        let e = TaskType::parse("painting").unwrap_err();
        assert!(
            e.0.contains("painting") && e.0.contains("federal2dvideoannotation"),
            "{e}"
        );
    }

    #[test]
    fn the_readme_holds_the_task_type_table_as_the_rules_write_it() {
        let readme = include_str!("../../README.md");
        let table = rules_markdown();
        assert!(
            readme.contains(&table),
            "README.md's task type table is stale; replace it with:\n{table}"
        );
    }
}
