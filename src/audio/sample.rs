//! A sample recording for trying dropsync out (`dropsync sample-wav`): a real WAV file, so that
//! intake's audio check takes it, made without ffmpeg or sox on the machine.

/// Samples per second: telephone audio.
const RATE: u32 = 8000;
/// The tone's pitch, in Hz.
const TONE: f64 = 440.0;

/// A WAV file (RIFF, PCM, 16-bit mono, 8 kHz) holding `seconds` of a quiet 440 Hz tone.
pub fn sample_wav(seconds: u32) -> Vec<u8> {
    let samples = RATE * seconds;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for n in 0..samples {
        let t = f64::from(n) / f64::from(RATE);
        // A quarter of full scale: audible, never clipping.
        let v = (8192.0 * (2.0 * std::f64::consts::PI * TONE * t).sin()) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_a_wav_of_the_length_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        std::fs::write(&path, sample_wav(61)).unwrap();
        let ms = crate::audio::duration_ms(&mut std::fs::File::open(&path).unwrap(), "wav").unwrap();
        assert_eq!(ms, 61_000);
    }
}
