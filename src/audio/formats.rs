//! Durations symphonia cannot give without decoding or guessing: Ogg Opus, MP3, GSM 6.10 and
//! Sun `.au`, each from its headers alone. Every reader is bounded: it reads headers, never a
//! whole file into memory, and refuses what does not parse with the reason.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use super::{frames_to_ms, read_up_to, unreadable};

type Result<T> = std::result::Result<T, String>;

fn len_of(file: &File) -> Result<u64> {
    file.metadata().map(|m| m.len()).map_err(unreadable)
}

// ---- Ogg Opus (RFC 7845) ----

/// Whether the file starts with an Ogg page whose first packet is an Opus header.
pub fn is_ogg_opus(file: &mut File) -> bool {
    let head = opus_head(file);
    let _ = file.seek(SeekFrom::Start(0));
    head.is_ok()
}

/// The pre-skip of the `OpusHead` packet on the first page (RFC 7845 §5.1).
fn opus_head(file: &mut File) -> Result<u16> {
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    let mut page = [0u8; 27 + 255 + 19];
    let n = read_up_to(file, &mut page)?;
    let page = &page[..n];
    if !page.starts_with(b"OggS") || page.len() < 27 {
        return Err("no Ogg page at the start".into());
    }
    let segments = page[26] as usize;
    let packet = page.get(27 + segments..).unwrap_or_default();
    if !packet.starts_with(b"OpusHead") || packet.len() < 12 {
        return Err("the first packet is not an OpusHead".into());
    }
    Ok(u16::from_le_bytes([packet[10], packet[11]]))
}

/// (last granule position − pre-skip) at 48 kHz, as RFC 7845 §4 defines an Opus stream's length.
pub fn ogg_opus_ms(file: &mut File) -> Result<u64> {
    let pre_skip = u64::from(opus_head(file)?);
    let len = len_of(file)?;
    // The last page is at most 65,307 bytes long.
    let tail_len = len.min(65_536 + 27 + 255);
    file.seek(SeekFrom::Start(len - tail_len)).map_err(unreadable)?;
    let mut tail = vec![0u8; tail_len as usize];
    let n = read_up_to(file, &mut tail)?;
    tail.truncate(n);
    let granule = (0..tail.len().saturating_sub(27))
        .rev()
        .filter(|&i| tail[i..].starts_with(b"OggS"))
        .map(|i| i64::from_le_bytes(tail[i + 6..i + 14].try_into().unwrap_or_default()))
        .find(|&g| g >= 0)
        .ok_or_else(|| "no Ogg page with a granule position at the end (cut short?)".to_owned())?;
    let samples = (granule as u64).saturating_sub(pre_skip);
    Ok(frames_to_ms(samples, 48_000))
}

// ---- MP3 (ISO/IEC 11172-3, 13818-3) ----

/// One MPEG audio frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    mpeg1: bool,
    layer: u8,
    sample_rate: u32,
    samples: u32,
    length: u32,
    mono: bool,
}

fn frame_header(b: [u8; 4]) -> Option<FrameHeader> {
    let word = u32::from_be_bytes(b);
    if word >> 21 != 0x7FF {
        return None;
    }
    let version = (word >> 19) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let layer = match (word >> 17) & 3 {
        3 => 1,
        2 => 2,
        1 => 3,
        _ => return None,
    };
    let bitrate_index = ((word >> 12) & 0xF) as usize;
    let rate_index = ((word >> 10) & 3) as usize;
    if version == 1 || bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    let mpeg1 = version == 3;
    const KBPS: [[u32; 15]; 5] = [
        [0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448], // MPEG-1 layer I
        [0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384],    // MPEG-1 layer II
        [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],     // MPEG-1 layer III
        [0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256],    // MPEG-2 layer I
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],         // MPEG-2 layers II, III
    ];
    let table = match (mpeg1, layer) {
        (true, l) => (l - 1) as usize,
        (false, 1) => 3,
        (false, _) => 4,
    };
    let bitrate = KBPS[table][bitrate_index] * 1000;
    let base = [44_100, 48_000, 32_000][rate_index];
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let padding = (word >> 9) & 1;
    let (samples, length) = match layer {
        1 => (384, (12 * bitrate / sample_rate + padding) * 4),
        2 => (1152, 144 * bitrate / sample_rate + padding),
        _ if mpeg1 => (1152, 144 * bitrate / sample_rate + padding),
        _ => (576, 72 * bitrate / sample_rate + padding),
    };
    Some(FrameHeader {
        mpeg1,
        layer,
        sample_rate,
        samples,
        length,
        mono: (word >> 6) & 3 == 3,
    })
}

/// The length of an MP3: from the Xing/Info (with LAME's encoder delay and padding) or VBRI
/// header's frame count when the first frame has one, else by walking every frame header. With
/// a header's count, also the most the file can hold: its bytes in frames of the stream's
/// lowest bitrate (a count of frames is believed only if they fit in the file).
pub fn mp3_ms(file: &mut File) -> Result<(u64, Option<u64>)> {
    let len = len_of(file)?;
    let mut r = BufReader::with_capacity(64 << 10, &mut *file);
    let start = skip_id3v2(&mut r)?;
    let (first_at, first) = find_first_frame(&mut r, start, len)?;
    // The first frame may be a Xing/Info or VBRI header frame instead of audio.
    let mut frame = vec![0u8; first.length as usize];
    r.seek(SeekFrom::Start(first_at)).map_err(unreadable)?;
    let n = read_up_to(&mut r, &mut frame)?;
    frame.truncate(n);
    if let Some(samples) = xing_samples(&frame, &first).or_else(|| vbri_samples(&frame, &first)) {
        let rate = u64::from(first.sample_rate);
        // Bitrate index 1, no padding: the shortest frame this stream's version, layer and
        // sample rate allow.
        let shortest = frame
            .get(..4)
            .and_then(|b| frame_header([b[0], b[1], (b[2] & 0x0C) | 0x10, b[3]]))
            .map(|h| u64::from(h.length.max(1)));
        let max_ms = shortest.map(|s| frames_to_ms((len - first_at) / s * u64::from(first.samples), rate));
        return Ok((frames_to_ms(samples, rate), max_ms));
    }
    // No header with a count: every frame is counted (the bitrate may vary; never estimated).
    // Relative seeks keep BufReader's buffer: one read per 64 KiB, not one per frame.
    let mut at = first_at;
    let mut frames = 0u64;
    let mut header = [0u8; 4];
    r.seek(SeekFrom::Start(at)).map_err(unreadable)?;
    while at + 4 <= len {
        if read_up_to(&mut r, &mut header)? < 4 {
            break;
        }
        match frame_header(header) {
            Some(h) if h.sample_rate == first.sample_rate && h.layer == first.layer && h.length >= 4 => {
                frames += 1;
                at += u64::from(h.length);
                r.seek_relative(i64::from(h.length) - 4).map_err(unreadable)?;
            }
            // The end of the frames: an ID3v1/APE tag, or trailing bytes.
            _ => break,
        }
    }
    let ms = frames_to_ms(frames * u64::from(first.samples), u64::from(first.sample_rate));
    Ok((ms, None))
}

/// Where the audio starts after an ID3v2 tag, if there is one.
pub(super) fn skip_id3v2<R: Read + Seek>(r: &mut R) -> Result<u64> {
    let mut h = [0u8; 10];
    r.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    if read_up_to(r, &mut h)? < 10 || !h.starts_with(b"ID3") {
        return Ok(0);
    }
    let size = h[6..10].iter().fold(0u64, |acc, b| (acc << 7) | u64::from(b & 0x7F));
    let footer = if h[5] & 0x10 != 0 { 10 } else { 0 };
    Ok(10 + size + footer)
}

/// The first frame header from `start`, confirmed by the one after it (a lone sync pattern in
/// a tag or in garbage is not a frame). Searches the first 64 KiB only.
fn find_first_frame<R: Read + Seek>(r: &mut R, start: u64, len: u64) -> Result<(u64, FrameHeader)> {
    let window = (len.saturating_sub(start)).min(64 << 10) as usize;
    let mut buf = vec![0u8; window + 4];
    r.seek(SeekFrom::Start(start)).map_err(unreadable)?;
    let n = read_up_to(r, &mut buf)?;
    buf.truncate(n);
    for i in 0..buf.len().saturating_sub(3) {
        let Some(h) = frame_header([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) else {
            continue;
        };
        let next = start + i as u64 + u64::from(h.length);
        if next + 4 > len {
            // A file of one frame.
            return Ok((start + i as u64, h));
        }
        let mut b = [0u8; 4];
        r.seek(SeekFrom::Start(next)).map_err(unreadable)?;
        if read_up_to(r, &mut b)? == 4 && frame_header(b).is_some_and(|n| n.sample_rate == h.sample_rate) {
            return Ok((start + i as u64, h));
        }
    }
    Err("no MPEG audio frame found".into())
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Samples from a Xing/Info header (LAME, ffmpeg): frames × samples per frame, less LAME's
/// encoder delay and padding when its tag is there.
fn xing_samples(frame: &[u8], h: &FrameHeader) -> Option<u64> {
    let side_info = match (h.mpeg1, h.mono) {
        (true, false) => 32,
        (true, true) => 17,
        (false, false) => 17,
        (false, true) => 9,
    };
    let at = 4 + side_info;
    let tag = frame.get(at..at + 4)?;
    if tag != b"Xing" && tag != b"Info" {
        return None;
    }
    let flags = be32(frame, at + 4)?;
    if flags & 1 == 0 {
        return None;
    }
    let frames = u64::from(be32(frame, at + 8)?);
    let mut lame = at + 8;
    for (bit, size) in [(1, 4), (2, 4), (4, 100), (8, 4)] {
        if flags & bit != 0 {
            lame += size;
        }
    }
    let total = frames * u64::from(h.samples);
    // LAME tag: 9 bytes of version, 12 more, then 12 bits of delay and 12 of padding.
    let trim = match frame.get(lame + 21..lame + 24) {
        Some(d) if frame.get(lame..lame + 4) == Some(b"LAME") || frame.get(lame..lame + 4) == Some(b"Lavc") => {
            let delay = (u64::from(d[0]) << 4) | u64::from(d[1] >> 4);
            let padding = (u64::from(d[1] & 0x0F) << 8) | u64::from(d[2]);
            delay + padding
        }
        _ => 0,
    };
    Some(total.saturating_sub(trim))
}

/// Samples from a VBRI header (Fraunhofer), 32 bytes after the frame header.
fn vbri_samples(frame: &[u8], h: &FrameHeader) -> Option<u64> {
    if frame.get(36..40)? != b"VBRI" {
        return None;
    }
    Some(u64::from(be32(frame, 36 + 14)?) * u64::from(h.samples))
}

// ---- GSM 6.10 and Sun .au ----

/// Raw GSM 6.10: 33-byte frames of 20 ms, each starting with the 0xD signature nibble.
pub fn gsm_ms(file: &mut File) -> Result<u64> {
    let len = len_of(file)?;
    if len == 0 || len % 33 != 0 {
        return Err(format!(
            "its size ({len} bytes) is not a whole number of 33-byte frames"
        ));
    }
    let mut first = [0u8; 1];
    file.read_exact(&mut first).map_err(unreadable)?;
    if first[0] >> 4 != 0xD {
        return Err("its first frame lacks the GSM signature".into());
    }
    Ok(len / 33 * 20)
}

/// Sun/NeXT `.au`: a big-endian header with the data size, encoding, rate and channels.
pub fn au_ms(file: &mut File) -> Result<u64> {
    let len = len_of(file)?;
    let mut h = [0u8; 24];
    if read_up_to(file, &mut h)? < 24 || !h.starts_with(b".snd") {
        return Err("no .snd header".into());
    }
    let (offset, size, encoding, rate, channels) = (
        u64::from(be32(&h, 4).unwrap_or(0)),
        be32(&h, 8).unwrap_or(u32::MAX),
        be32(&h, 12).unwrap_or(0),
        be32(&h, 16).unwrap_or(0),
        be32(&h, 20).unwrap_or(0),
    );
    let bytes_per_sample = match encoding {
        1 | 2 | 27 => 1, // µ-law, 8-bit linear, A-law
        3 => 2,
        4 => 3,
        5 | 6 => 4,
        7 => 8,
        other => return Err(format!("encoding {other} is not PCM, µ-law or A-law")),
    };
    if rate == 0 || channels == 0 || offset < 24 || offset > len {
        return Err("its header is inconsistent".into());
    }
    let available = len - offset;
    let data = if size == u32::MAX {
        available
    } else {
        u64::from(size).min(available)
    };
    let frames = data / (bytes_per_sample * u64::from(channels));
    Ok(frames_to_ms(frames, u64::from(rate)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        std::io::Seek::seek(&mut f, SeekFrom::Start(0)).unwrap();
        f
    }

    /// MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding: 417-byte frames of 1,152 samples.
    const MP3_HEADER: [u8; 4] = [0xFF, 0xFB, 0x90, 0x00];

    #[test]
    fn mp3_frame_headers() {
        let h = frame_header(MP3_HEADER).unwrap();
        assert_eq!((h.sample_rate, h.samples, h.length, h.layer), (44_100, 1152, 417, 3));
        // MPEG-2.5 layer III at 8 kHz, 16 kbit/s: 576 samples, 72 * 16000 / 8000 = 144 bytes.
        let h = frame_header([0xFF, 0xE3, 0x28, 0xC4]).unwrap();
        assert_eq!((h.sample_rate, h.samples, h.length), (8_000, 576, 144));
        assert_eq!(
            frame_header([0xFF, 0xFB, 0xF0, 0x00]),
            None,
            "bitrate index 15 is invalid"
        );
        assert_eq!(frame_header([0x12, 0x34, 0x56, 0x78]), None);
    }

    #[test]
    fn mp3_without_a_header_is_counted_frame_by_frame() {
        let mut bytes = b"ID3\x03\x00\x00\x00\x00\x00\x0a0123456789".to_vec();
        for _ in 0..100 {
            let mut frame = vec![0u8; 417];
            frame[..4].copy_from_slice(&MP3_HEADER);
            bytes.extend_from_slice(&frame);
        }
        bytes.extend_from_slice(b"TAG");
        bytes.resize(bytes.len() + 125, b' ');
        // 100 frames of 1,152 samples at 44.1 kHz.
        assert_eq!(
            mp3_ms(&mut file_with(&bytes)),
            Ok((frames_to_ms(115_200, 44_100), None))
        );
        assert_eq!(
            mp3_ms(&mut file_with(b"plain text, no frames")),
            Err("no MPEG audio frame found".into())
        );
    }

    #[test]
    fn gsm_and_au() {
        let mut gsm = vec![0u8; 33 * 50];
        for frame in gsm.chunks_mut(33) {
            frame[0] = 0xD8;
        }
        assert_eq!(gsm_ms(&mut file_with(&gsm)), Ok(1000));
        assert!(gsm_ms(&mut file_with(&gsm[..40])).unwrap_err().contains("33-byte"));
        // µ-law, 8 kHz, mono, data size unknown (all ones): 8,000 bytes after a 24-byte header.
        let mut au = b".snd\x00\x00\x00\x18\xff\xff\xff\xff\x00\x00\x00\x01\x00\x00\x1f\x40\x00\x00\x00\x01".to_vec();
        au.resize(24 + 8000, 0x7F);
        assert_eq!(au_ms(&mut file_with(&au)), Ok(1000));
        au[15] = 23; // G.721 ADPCM
        assert!(au_ms(&mut file_with(&au)).unwrap_err().contains("encoding 23"));
    }
}
