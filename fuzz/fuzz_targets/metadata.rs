//! Metadata files (CSV, TSV, JSON, JSON Lines) through the streaming readers and row mapping,
//! with the usual mapping: rows are accepted or rejected with a reason, never a panic.
#![no_main]

use dropsync::matching::{self, MetadataFormat, RowContext};
use dropsync::tenant::{Mapping, TimeColumns};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let format = [
        MetadataFormat::Csv,
        MetadataFormat::Tsv,
        MetadataFormat::JsonArray,
        MetadataFormat::JsonLines,
    ][pick as usize % 4];
    let mapping = Mapping {
        conversation_id: Some("id".into()),
        agent: "agent".into(),
        time: TimeColumns::Single {
            column: "time".into(),
            format: if pick & 0x10 != 0 {
                Some("%d/%m/%Y, %H:%M".into())
            } else {
                None
            },
        },
        recording: (pick & 0x20 != 0).then(|| "recording".into()),
        required_columns: vec![],
    };
    let extensions: Vec<String> = dropsync::config::DEFAULT_RECORDING_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _ = matching::read_rows::<_, ()>(format, bytes, 4096, |r| {
        let ctx = RowContext {
            mapping: &mapping,
            timezone: chrono_tz::Europe::Paris,
            extensions: &extensions,
            file_stem: "batch",
            first_row: r.row <= 2,
        };
        if let Ok(record) = r.record {
            let _ = matching::map_row(&ctx, record);
        }
        Ok(())
    });
});
