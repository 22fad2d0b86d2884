//! How long a recording is, read from its headers at intake without decoding the audio (SPEC
//! §9), and whether it is audio of its extension's format at all.
//!
//! symphonia reads WAV, AIFF, FLAC, Ogg Vorbis and MP4/M4A (their track's frame count and time
//! base). The rest is read here (`formats.rs`), because symphonia has no reader for them or would
//! guess: Ogg Opus (the last page's granule position less the pre-skip), MP3 (the Xing/Info or
//! VBRI frame count, else every frame header walked, never estimated from the bitrate), GSM 6.10
//! (33 bytes a 20 ms frame) and Sun `.au` (its header).
//!
//! A length read from a header is what the tenant's file says; it is believed only as far as
//! the file's size can hold it (`bounds.rs`), or the file is refused with both figures.

mod bounds;
mod formats;
mod sample;

pub use sample::sample_wav;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

/// Why a file is not taken as audio of its extension's format, said so that a person can act
/// on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAudio {
    /// "not a readable WAV file: no RIFF header".
    Unreadable { format: &'static str, why: String },
    /// Its header claims more audio than its size can hold at the stream's bitrate: "a WAV
    /// file that claims 100:00 of audio, but its 156 KiB hold at most 0:10".
    Implausible {
        format: &'static str,
        claimed_ms: u64,
        bytes: u64,
        max_ms: u64,
    },
}

impl std::fmt::Display for NotAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAudio::Unreadable { format, why } => write!(f, "not a readable {format} file: {why}"),
            NotAudio::Implausible {
                format,
                claimed_ms,
                bytes,
                max_ms,
            } => write!(
                f,
                "{} {format} file that claims {} of audio, but its {} hold at most {}",
                article(format),
                clock(*claimed_ms),
                size(*bytes),
                clock(*max_ms)
            ),
        }
    }
}

impl std::error::Error for NotAudio {}

impl NotAudio {
    pub fn unreadable(format: &'static str, why: String) -> Self {
        NotAudio::Unreadable { format, why }
    }
}

/// "an" before a format name said with a vowel sound first (MP3, M4A, Ogg, AIFF), else "a".
fn article(format: &str) -> &'static str {
    if format.starts_with(['A', 'E', 'I', 'M', 'O']) {
        "an"
    } else {
        "a"
    }
}

/// `m:ss`, minutes unbounded, seconds rounded down.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}

/// A file size as a person reads it.
fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..0x10_0000 => format!("{} KiB", bytes / 1024),
        _ => format!("{:.1} MiB", bytes as f64 / f64::from(0x10_0000)),
    }
}

/// The duration in milliseconds of the recording in `file`, whose name ends in `.{ext}`.
pub fn duration_ms(file: &mut File, ext: &str) -> Result<u64, NotAudio> {
    let ext = ext.to_ascii_lowercase();
    let format = format_name(&ext);
    let (ms, max_ms) = read_length(file, &ext).map_err(|why| NotAudio::unreadable(format, why))?;
    match max_ms {
        Some(max_ms) if ms > bounds::with_slack(max_ms) => Err(NotAudio::Implausible {
            format,
            claimed_ms: ms,
            bytes: file.metadata().map_or(0, |m| m.len()),
            max_ms,
        }),
        _ => Ok(ms),
    }
}

/// The length a file gives, and the most its size can hold when that length comes from a
/// header (`None`: it was counted from the bytes, or there is no bound for the format).
fn read_length(file: &mut File, ext: &str) -> Result<(u64, Option<u64>), String> {
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    match ext {
        "opus" => Ok((formats::ogg_opus_ms(file)?, Some(bounds::ogg_opus(len)))),
        "mp3" => formats::mp3_ms(file),
        "gsm" => Ok((formats::gsm_ms(file)?, None)),
        "au" => Ok((formats::au_ms(file)?, None)),
        "ogg" => {
            // An .ogg may hold Opus as well as Vorbis.
            if formats::is_ogg_opus(file) {
                Ok((formats::ogg_opus_ms(file)?, Some(bounds::ogg_opus(len))))
            } else {
                Ok((symphonia_ms(file, ext)?, Some(bounds::ogg_vorbis(len))))
            }
        }
        _ => {
            check_magic(file, ext)?;
            let ms = symphonia_ms(file, ext)?;
            let max_ms = match ext {
                "wav" => bounds::wav(file, len)?,
                "flac" => bounds::flac(file, len)?,
                "m4a" => Some(bounds::m4a(len)),
                _ => None,
            };
            Ok((ms, max_ms))
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

    /// `ms` of a tone by ffmpeg at 8 kHz mono, as `ext` (with `codec` options).
    fn ffmpeg(ext: &str, ms: u32, codec: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("a.{ext}"));
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency=440:sample_rate=8000:duration={}",
                f64::from(ms) / 1000.0
            ))
            .args(["-ac", "1"])
            .args(codec)
            .arg(&out)
            .status()
            .expect("ffmpeg is missing: apt install ffmpeg (./scripts/test does)");
        assert!(status.success());
        std::fs::read(out).unwrap()
    }

    /// What `bytes` read as `ext` give: the length, or the message.
    fn read(bytes: &[u8], ext: &str) -> Result<u64, String> {
        duration_ms(&mut file_with(bytes), ext).map_err(|e| e.to_string())
    }

    /// The file's last Ogg page says its stream ends at `granule`, with its CRC made right.
    fn patch_last_granule(ogg: &mut [u8], granule: u64) {
        let at = ogg.windows(4).rposition(|w| w == b"OggS").unwrap();
        ogg[at + 6..at + 14].copy_from_slice(&granule.to_le_bytes());
        ogg[at + 22..at + 26].fill(0);
        // RFC 3533: CRC-32, polynomial 0x04c11db7, no reflection, over the page, CRC zeroed.
        let mut crc = 0u32;
        for &b in &ogg[at..] {
            crc ^= u32::from(b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        ogg[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
    }

    /// Multiplies by `factor` the big-endian u32 `skip` bytes after the first `tag`.
    fn scale_be32(bytes: &mut [u8], tag: &[u8; 4], skip: usize, factor: u32) {
        let at = bytes.windows(4).position(|w| w == tag).unwrap() + skip;
        let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&(n * factor).to_be_bytes());
    }

    #[test]
    fn a_wav_whose_data_chunk_claims_more_than_the_file_holds() {
        let mut w = wav(8000, 80_000);
        assert_eq!(read(&w, "wav"), Ok(10_000));
        let claimed = 100 * 60 * 16_000u32;
        w[40..44].copy_from_slice(&claimed.to_le_bytes());
        w[4..8].copy_from_slice(&(claimed + 36).to_le_bytes());
        assert_eq!(
            read(&w, "wav"),
            Err("a WAV file that claims 100:00 of audio, but its 156 KiB hold at most 0:10".into())
        );
    }

    #[test]
    fn an_mp3_whose_xing_count_is_more_frames_than_fit() {
        let mut mp3 = ffmpeg("mp3", 10_000, &[]);
        let ms = read(&mp3, "mp3").unwrap();
        assert!((10_000..10_100).contains(&ms), "{ms}");
        // The Xing/Info frame count, after its tag and flags: 100 times as many frames.
        scale_be32(&mut mp3, b"Info", 8, 100);
        let err = read(&mp3, "mp3").unwrap_err();
        assert!(err.starts_with("an MP3 file that claims 16:"), "{err}");
        assert!(err.ends_with("KiB hold at most 0:10"), "{err}");
    }

    #[test]
    fn a_flac_whose_streaminfo_claims_more_samples_than_fit() {
        let mut flac = ffmpeg("flac", 10_000, &[]);
        assert_eq!(read(&flac, "flac"), Ok(10_000));
        // STREAMINFO's 36-bit total sample count ends 18 bytes into its body (8 bytes in).
        let total = 100u64 * 60 * 8000;
        flac[8 + 13] = (flac[8 + 13] & 0xF0) | (total >> 32) as u8;
        flac[8 + 14..8 + 18].copy_from_slice(&(total as u32).to_be_bytes());
        let err = read(&flac, "flac").unwrap_err();
        assert!(
            err.starts_with("a FLAC file that claims 100:00 of audio, but its "),
            "{err}"
        );
    }

    #[test]
    fn ogg_vorbis_and_opus_whose_last_granule_is_beyond_their_size() {
        for (ext, codec, rate) in [("ogg", "libvorbis", 8000u64), ("opus", "libopus", 48_000)] {
            let mut ogg = ffmpeg(ext, 10_000, &["-c:a", codec]);
            let ms = read(&ogg, ext).unwrap();
            assert!((10_000..10_030).contains(&ms), "{ext}: {ms}");
            // A second more than 100 minutes: Opus takes its pre-skip off.
            patch_last_granule(&mut ogg, (100 * 60 + 1) * rate);
            let err = read(&ogg, ext).unwrap_err();
            assert!(err.starts_with("an Ogg"), "{ext}: {err}");
            assert!(err.contains("claims 100:0"), "{ext}: {err}");
        }
    }

    /// AIFF needs no bound: its length is read from the sound data chunk, not COMM's frame
    /// count, and a chunk that claims more bytes than the file has is refused.
    #[test]
    fn an_aiff_is_timed_by_its_sound_data_whatever_comm_claims() {
        let mut aiff = ffmpeg("aiff", 10_000, &[]);
        assert_eq!(read(&aiff, "aiff"), Ok(10_000));
        // COMM's frame count, after its channel count: 600 times as many frames.
        scale_be32(&mut aiff, b"COMM", 10, 600);
        assert_eq!(read(&aiff, "aiff"), Ok(10_000));
        scale_be32(&mut aiff, b"SSND", 4, 600);
        scale_be32(&mut aiff, b"FORM", 4, 600);
        let err = read(&aiff, "aiff").unwrap_err();
        assert!(err.starts_with("not a readable AIFF file"), "{err}");
    }

    #[test]
    fn an_m4a_whose_sample_table_claims_more_than_fits() {
        let mut m4a = ffmpeg("m4a", 10_000, &[]);
        assert_eq!(read(&m4a, "m4a"), Ok(10_128));
        // The first run of the time-to-sample table: 600 times as many 1,024-sample frames.
        scale_be32(&mut m4a, b"stts", 12, 600);
        let err = read(&m4a, "m4a").unwrap_err();
        assert!(err.starts_with("an M4A (MPEG-4 audio) file that claims 101:"), "{err}");
    }

    #[test]
    fn rounding() {
        assert_eq!(frames_to_ms(8000, 8000), 1000);
        assert_eq!(frames_to_ms(4, 8000), 1);
        assert_eq!(frames_to_ms(3, 8000), 0);
    }
}
