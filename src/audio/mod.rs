//! How long a recording is, read from its headers at intake without decoding the audio (SPEC
//! §9), and whether it is audio of its extension's format at all.
//!
//! symphonia reads WAV, AIFF, FLAC, Ogg Vorbis and MP4/M4A (their track's frame count and time
//! base). The rest is read here (`formats.rs`), because symphonia has no reader for them or would
//! guess: Ogg Opus (the last page's granule position less the pre-skip), MP3 (the Xing/Info or
//! VBRI frame count, else every frame header walked, never estimated from the bitrate), GSM 6.10
//! (33 bytes a 20 ms frame) and Sun `.au` (its header).

mod formats;
mod sample;

pub use sample::sample_wav;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

/// Why a file is not readable audio of its extension's format, said so that a person can act on
/// it: "not a readable WAV file: no RIFF header".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a readable {format} file: {why}")]
pub struct NotAudio {
    pub format: &'static str,
    pub why: String,
}

/// The duration in milliseconds of the recording in `file`, whose name ends in `.{ext}`.
pub fn duration_ms(file: &mut File, ext: &str) -> Result<u64, NotAudio> {
    let ext = ext.to_ascii_lowercase();
    let format = format_name(&ext);
    let fail = |why: String| NotAudio { format, why };
    file.seek(SeekFrom::Start(0))
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    match ext.as_str() {
        "opus" => formats::ogg_opus_ms(file).map_err(fail),
        "mp3" => formats::mp3_ms(file).map_err(fail),
        "gsm" => formats::gsm_ms(file).map_err(fail),
        "au" => formats::au_ms(file).map_err(fail),
        "ogg" => {
            // An .ogg may hold Opus as well as Vorbis.
            if formats::is_ogg_opus(file) {
                formats::ogg_opus_ms(file).map_err(fail)
            } else {
                symphonia_ms(file, &ext).map_err(fail)
            }
        }
        _ => {
            check_magic(file, &ext).map_err(fail)?;
            symphonia_ms(file, &ext).map_err(fail)
        }
    }
}

/// The format's name for messages.
fn format_name(ext: &str) -> &'static str {
    match ext {
        "wav" => "WAV",
        "mp3" => "MP3",
        "flac" => "FLAC",
        "ogg" => "Ogg",
        "opus" => "Ogg Opus",
        "m4a" => "M4A (MPEG-4 audio)",
        "aiff" | "aif" => "AIFF",
        "au" => "Sun AU",
        "gsm" => "GSM 6.10",
        _ => "audio",
    }
}

/// The first bytes each container must start with: a file that does not is refused with the
/// reason, before any parser guesses at it.
fn check_magic(file: &mut File, ext: &str) -> Result<(), String> {
    let mut head = [0u8; 12];
    let n = read_up_to(file, &mut head).map_err(|e| format!("cannot read it: {e}"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let head = &head[..n];
    let ok = match ext {
        "wav" => head.starts_with(b"RIFF") || head.starts_with(b"RF64"),
        "aiff" | "aif" => {
            head.starts_with(b"FORM") && (head.get(8..12) == Some(b"AIFF") || head.get(8..12) == Some(b"AIFC"))
        }
        "flac" => head.starts_with(b"fLaC") || head.starts_with(b"ID3"),
        "m4a" => head.get(4..8) == Some(b"ftyp"),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match ext {
        "wav" => "no RIFF header".into(),
        "aiff" | "aif" => "no FORM/AIFF header".into(),
        "flac" => "no fLaC header".into(),
        "m4a" => "no MP4 ftyp box".into(),
        _ => "unknown header".into(),
    })
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).map_err(unreadable)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The reason for an I/O error while reading a recording.
fn unreadable(e: std::io::Error) -> String {
    format!("cannot read it: {e}")
}

/// symphonia's reading: the default audio track's playable frames at its sample rate, else its
/// duration in its time base.
fn symphonia_ms(file: &mut File, ext: &str) -> Result<u64, String> {
    let file = file.try_clone().map_err(unreadable)?;
    let stream = MediaSourceStream::new(Box::new(file), MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    hint.with_extension(ext);
    let reader = symphonia::default::get_probe()
        .probe(&hint, stream, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| e.to_string())?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or_else(|| "no audio track".to_owned())?;
    let rate = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .and_then(|a| a.sample_rate);
    if let (Some(frames), Some(rate)) = (track.num_frames, rate)
        && rate > 0
    {
        return Ok(frames_to_ms(frames, u64::from(rate)));
    }
    match (track.duration, track.time_base) {
        (Some(d), Some(tb)) => tb
            .calc_duration(d)
            .map(|t| t.as_millis().max(0) as u64)
            .ok_or_else(|| "its length overflows".to_owned()),
        _ => Err("its header gives no length".to_owned()),
    }
}

/// `frames` at `rate` per second, in ms, rounded to the nearest.
pub(crate) fn frames_to_ms(frames: u64, rate: u64) -> u64 {
    ((u128::from(frames) * 1000 + u128::from(rate) / 2) / u128::from(rate)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    /// A 16-bit mono PCM WAV of `frames` frames at `rate`.
    fn wav(rate: u32, frames: u32) -> Vec<u8> {
        let data = frames * 2;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data.to_le_bytes());
        b.resize(b.len() + data as usize, 0);
        b
    }

    #[test]
    fn wav_duration_and_what_is_not_wav() {
        assert_eq!(duration_ms(&mut file_with(&wav(8000, 489_840)), "wav"), Ok(61_230));
        assert_eq!(duration_ms(&mut file_with(&wav(8000, 489_840)), "WAV"), Ok(61_230));
        let err = duration_ms(&mut file_with(b"this is a text file, not audio"), "wav").unwrap_err();
        assert_eq!(err.to_string(), "not a readable WAV file: no RIFF header");
        let err = duration_ms(&mut file_with(b""), "flac").unwrap_err();
        assert_eq!(err.to_string(), "not a readable FLAC file: no fLaC header");
    }

    #[test]
    fn rounding() {
        assert_eq!(frames_to_ms(8000, 8000), 1000);
        assert_eq!(frames_to_ms(4, 8000), 1);
        assert_eq!(frames_to_ms(3, 8000), 0);
    }
}
