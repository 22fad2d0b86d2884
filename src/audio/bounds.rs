//! How much audio a file's size can hold, per format: the check on a length its header claims.
//! A header is written by the tenant's software and can say anything; the bytes that carry the
//! audio cannot be fewer than the format's smallest encoding of that much sound.
//!
//! Where the stream states its own rate (WAV's byte rate, MP3's frame size at its lowest
//! bitrate, FLAC's block and frame sizes) the bound follows from it. Where a codec's rate has no
//! floor in its headers (Ogg Vorbis, Ogg Opus, AAC in M4A) it is a floor well below what their
//! encoders write for digital silence, the least any recording can cost.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use super::formats::skip_id3v2;
use super::{frames_to_ms, read_up_to, unreadable};

type Result<T> = std::result::Result<T, String>;

/// Ogg Opus, bytes a second at the least. libopus writes 20 ms packets of 2 or 3 bytes for
/// digital silence at 8 kHz, plus their lacing: 227 B/s over 10 minutes (ffmpeg 5, VBR), 276
/// B/s in 60 ms packets at 6 kbit/s. A quarter of that leaves room for DTX and longer packets.
const OPUS_FLOOR: u64 = 56;

/// Ogg Vorbis, bytes a second at the least: libvorbis writes 93 B/s of digital silence at 8 kHz
/// mono even at its lowest quality (-q -1). A quarter of that.
const VORBIS_FLOOR: u64 = 23;

/// AAC in M4A, bytes a second at the least: ffmpeg's encoder writes 64 B/s of digital silence
/// at 8 kHz mono, at any bitrate asked (its frames are nearly empty, and the sample table's 4
/// bytes a frame dominate). A quarter of that; higher rates have more frames a second, so more.
const M4A_FLOOR: u64 = 16;

/// A claim within 2 % and 100 ms of the bound is let through: nominal byte rates of compressed
/// WAV codecs are rounded, and lengths are rounded to the millisecond.
pub(super) fn with_slack(max_ms: u64) -> u64 {
    max_ms.saturating_add(max_ms / 50).saturating_add(100)
}

/// `len` bytes at `floor` bytes a second, in ms.
fn at_floor(len: u64, floor: u64) -> u64 {
    u64::try_from(u128::from(len) * 1000 / u128::from(floor)).unwrap_or(u64::MAX)
}

pub(super) fn ogg_opus(len: u64) -> u64 {
    at_floor(len, OPUS_FLOOR)
}

pub(super) fn ogg_vorbis(len: u64) -> u64 {
    at_floor(len, VORBIS_FLOOR)
}

pub(super) fn m4a(len: u64) -> u64 {
    at_floor(len, M4A_FLOOR)
}

/// WAV: the bytes from the start of the data chunk to the end of the file, at the `fmt ` chunk's
/// average byte rate (exact for PCM, µ-law, A-law, GSM; nominal for ADPCM). `None` when the
/// chunks cannot be walked to the data (symphonia read it some other way).
pub(super) fn wav(file: &mut File, len: u64) -> Result<Option<u64>> {
    let mut at = 12u64;
    let mut byte_rate = None;
    // A WAV has a handful of chunks before its data; a long walk is not a WAV worth bounding.
    for _ in 0..64 {
        let mut head = [0u8; 20];
        file.seek(SeekFrom::Start(at)).map_err(unreadable)?;
        let n = read_up_to(file, &mut head)?;
        if n < 8 {
            return Ok(None);
        }
        let size = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
        match &head[..4] {
            // fmt: format (2), channels (2), sample rate (4), average bytes a second (4).
            b"fmt " if n == 20 => {
                byte_rate = Some(u64::from(u32::from_le_bytes([head[16], head[17], head[18], head[19]])))
            }
            b"data" => {
                return Ok(byte_rate
                    .filter(|&r| r > 0)
                    .map(|r| at_floor(len.saturating_sub(at + 8), r)));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = at.saturating_add(8).saturating_add(size).saturating_add(size & 1);
    }
    Ok(None)
}

/// FLAC: every frame but the last holds at most STREAMINFO's largest block of samples, and
/// takes at least its smallest frame size, never under 10 bytes (a 6-byte header, one constant
/// subframe of 2, the CRC-16).
pub(super) fn flac(file: &mut File, len: u64) -> Result<Option<u64>> {
    let start = skip_id3v2(file)?;
    let mut head = [0u8; 8 + 18];
    file.seek(SeekFrom::Start(start)).map_err(unreadable)?;
    if read_up_to(file, &mut head)? < head.len() || !head.starts_with(b"fLaC") || head[4] & 0x7F != 0 {
        return Ok(None);
    }
    let info = &head[8..];
    let max_block = u64::from(u16::from_be_bytes([info[2], info[3]]));
    let min_frame = u64::from(u32::from_be_bytes([0, info[4], info[5], info[6]])).max(10);
    let rate = (u64::from(info[10]) << 12) | (u64::from(info[11]) << 4) | (u64::from(info[12]) >> 4);
    if rate == 0 {
        return Ok(None);
    }
    // Blocks are 16 to 65,535 samples; an impossible maximum is taken as the largest.
    let max_block = if max_block < 16 { 65_535 } else { max_block };
    let frames = len.saturating_sub(start + 42) / min_frame + 1;
    Ok(Some(frames_to_ms(frames.saturating_mul(max_block), rate)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_and_slack() {
        assert_eq!(ogg_opus(56_000), 1_000_000);
        assert_eq!(with_slack(10_000), 10_300);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"RIFF\0\0\0\0WAVEjunk\x02\0\0\0xxdata").unwrap();
        assert_eq!(wav(&mut f, 30).unwrap(), None, "no fmt chunk before the data");
    }
}
