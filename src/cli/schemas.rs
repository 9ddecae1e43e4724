//! `schemas`: the published JSON Schemas, printed or written as the checked-in files.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use taskledger_events::schema::{file_text, schema_document, schema_files};

pub(super) fn run(write: bool, dir: &Path) -> anyhow::Result<ExitCode> {
    if !write {
        println!("{}", file_text(&schema_document()).trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = schema_files();
    for file in &files {
        let path = dir.join(&file.file_name);
        std::fs::write(&path, file_text(&file.schema))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("wrote {} schemas to {}", files.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const REGENERATE: &str =
        "regenerate them with `cargo run -- schemas --write` (see the README's \
                              \"Schemas and evolution\")";

    #[test]
    fn the_checked_in_schema_files_are_the_ones_the_types_generate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/schemas");
        let mut on_disk = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("events/schemas/ exists") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                on_disk.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
        let generated: BTreeMap<String, String> = schema_files()
            .into_iter()
            .map(|f| (f.file_name, file_text(&f.schema)))
            .collect();
        let missing: Vec<&String> = generated
            .keys()
            .filter(|k| !on_disk.contains_key(*k))
            .collect();
        let extra: Vec<&String> = on_disk
            .keys()
            .filter(|k| !generated.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "schema files missing: {missing:?}; {REGENERATE}"
        );
        assert!(
            extra.is_empty(),
            "schema files no type generates: {extra:?} (an older version must be listed in \
             taskledger_events::schema::FROZEN; a removed type's file deleted)"
        );
        for (name, text) in &generated {
            assert_eq!(
                &on_disk[name], text,
                "{name} differs from its type; {REGENERATE}"
            );
        }
    }
}
