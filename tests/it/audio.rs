//! Recording durations read at intake (SPEC §9), on real audio that ffmpeg makes at test time.

use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// Every format's duration lands in `metadata.json`, per recording and for the conversation
/// (its longest recording), to the millisecond where the format allows it.
#[test]
fn each_formats_duration_is_in_metadata_json() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    // 61.23 s of audio in each format. GSM counts whole 20 ms frames; AAC in M4A starts with
    // 1,024 samples of encoder priming that symphonia counts (128 ms at 8 kHz).
    let formats: [(&str, u64, u64); 9] = [
        ("wav", 61_230, 0),
        ("mp3", 61_230, 0),
        ("ogg", 61_230, 0),
        ("opus", 61_230, 0),
        ("flac", 61_230, 0),
        ("aiff", 61_230, 0),
        ("au", 61_230, 0),
        ("gsm", 61_240, 0),
        ("m4a", 61_230, 128),
    ];
    let mut csv = format!("{HEADER}\n");
    for (ext, ..) in formats {
        d.put("acme", &format!("f-{ext}.{ext}"), &encoded(ext, ext, 61_230));
        csv += &format!("{}\n", csv_row(&format!("F-{ext}"), &format!("f-{ext}.{ext}")));
    }
    // MP3 without a Xing/Info header, constant and variable bitrate: every frame is counted
    // (72 ms each at 8 kHz), so the encoder's delay and padding are in, at most 3 frames.
    for (name, options) in [
        ("cbr", &["-write_xing", "0"][..]),
        ("vbr", &["-write_xing", "0", "-q:a", "7"][..]),
    ] {
        d.put(
            "acme",
            &format!("{name}.mp3"),
            &encoded_with(name, "mp3", 61_230, options),
        );
        csv += &format!("{}\n", csv_row(&format!("MP3-{name}"), &format!("{name}.mp3")));
    }
    // Two recordings: the conversation lasts as long as the longer one.
    d.put("acme", "two-a.wav", &encoded("two-a", "wav", 2_500));
    d.put("acme", "two-b.mp3", &encoded("two-b", "mp3", 4_000));
    csv += &format!("{}\n", csv_row("TWO", "two-a.wav;two-b.mp3"));
    d.put("acme", "batch.csv", csv.as_bytes());
    let fwd = d.wait_forwarded(formats.len() + 3, T);
    for name in ["cbr", "vbr"] {
        let got = fwd[&format!("MP3-{name}")]["duration_ms"].as_u64().unwrap();
        assert!(
            (61_230..=61_230 + 3 * 72).contains(&got),
            "{name} MP3 without Xing: {got} ms"
        );
        assert_eq!((got * 8) % 576, 0, "{name}: a whole number of frames, {got} ms");
    }
    for (ext, ms, slack) in formats {
        let doc = &fwd[&format!("F-{ext}")];
        let got = doc["recordings"][0]["duration_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{ext}: {doc}"));
        assert!(
            got >= ms && got <= ms + slack,
            "{ext}: {got} ms, expected {ms} (+{slack})"
        );
        assert_eq!(doc["duration_ms"], got, "{ext}");
    }
    let two = &fwd["TWO"];
    assert_eq!(two["recordings"][0]["duration_ms"], 2_500);
    assert_eq!(two["recordings"][1]["duration_ms"], 4_000);
    assert_eq!(two["duration_ms"], 4_000);
}

/// A file named `.wav` that is not WAV rejects its row with a reason a person can act on; the
/// file's other rows go on, and the daemon says so in its log.
#[test]
fn a_recording_that_is_not_audio_rejects_its_row_with_the_reason() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let good = audio("good", 8_044);
    d.put("acme", "good.wav", &good);
    d.put("acme", "fake.wav", b"Subject: call notes\n\nnot a recording at all\n");
    d.put("acme", "fake.mp3", &encoded("x", "wav", 500));
    d.put(
        "acme",
        "batch.csv",
        format!(
            "{HEADER}\n{}\n{}\n{}\n",
            csv_row("GOOD", "good.wav"),
            csv_row("FAKE", "fake.wav"),
            csv_row("WRONG", "fake.mp3")
        )
        .as_bytes(),
    );
    let lines = d.wait_report("acme", "batch.csv.report.csv", 3);
    assert_eq!(lines[0][3], "forwarded", "{lines:?}");
    assert_eq!(lines[1][3], "rejected", "{lines:?}");
    assert_eq!(lines[1][4], "fake.wav is not a readable WAV file: no RIFF header");
    assert_eq!(lines[2][3], "rejected", "{lines:?}");
    assert_eq!(
        lines[2][4],
        "fake.mp3 is not a readable MP3 file: no MPEG audio frame found"
    );
    assert_recordings(&d, &d.forwarded()["GOOD"], &[("good.wav", &good)]);
    assert_eq!(d.forwarded()["GOOD"]["duration_ms"], 1_000);
    assert!(d.log().contains("not a readable WAV file"), "{}", d.log());
}

/// One minute a month: 30 s and 25 s go out, the 10 s conversation after them is held (with
/// the reason in its report) until a SIGHUP raises the allocation to two minutes. `status
/// --json` and the metrics count the seconds that went out.
#[test]
fn a_minute_allocation_holds_what_does_not_fit_until_it_is_raised() {
    let tenants = ACME.replace("id = \"acme\"", "id = \"acme\"\nminute_allocation = 1");
    let mut d = Daemon::new("1h", &tenants);
    let port = free_port();
    let config = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{config}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    d.start();
    // (len - 44) / 8 ms of audio each.
    let calls = [("A", 240_044), ("B", 200_044), ("C", 80_044)];
    let mut csv = format!("{HEADER}\n");
    for (id, len) in calls {
        d.put("acme", &format!("{id}.wav"), &audio(id, len));
        csv += &format!("{}\n", csv_row(id, &format!("{id}.wav")));
    }
    d.put("acme", "batch.csv", csv.as_bytes());
    let lines = d.wait_report("acme", "batch.csv.report.csv", 3);
    let states: Vec<&str> = lines.iter().map(|l| l[3].as_str()).collect();
    assert_eq!(states, ["forwarded", "forwarded", "held"], "{lines:?}");
    assert!(lines[2][4].contains("would pass the 1 minutes"), "{lines:?}");
    assert_eq!(d.forwarded().len(), 2);
    let minutes = |d: &Daemon| -> serde_json::Value {
        let out = d.cli(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["minutes"]["acme"].clone()
    };
    let m = minutes(&d);
    assert_eq!(
        (m["seconds_used"].as_u64(), m["minute_allocation"].as_u64()),
        (Some(55), Some(1)),
        "{m}"
    );
    let text = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains("acme: 0.92 minutes forwarded in") && text.contains("(of 1)"),
        "{text}"
    );

    let raised = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("minute_allocation = 1", "minute_allocation = 2");
    std::fs::write(&d.config, raised).unwrap();
    assert!(d.signal(libc::SIGHUP));
    let fwd = d.wait_forwarded(3, T);
    assert_eq!(fwd["C"]["duration_ms"], 10_000);
    let m = minutes(&d);
    assert_eq!(
        (m["seconds_used"].as_u64(), m["minute_allocation"].as_u64()),
        (Some(65), Some(2)),
        "{m}"
    );
    let (_, body) = http_get(port, "/metrics");
    let used = sample(&body, &["dropsync_minutes_used{", "tenant=\"acme\""]).unwrap_or(-1.0);
    assert!((used - 65.0 / 60.0).abs() < 1e-6, "{body}");
    assert_eq!(
        sample(&body, &["dropsync_minute_allocation{", "tenant=\"acme\""]),
        Some(2.0),
        "{body}"
    );
}

/// A WAV whose data chunk claims 100 minutes in a 10 s file is not believed: its row is
/// rejected with what it claims and what its bytes can hold, the batch's other row goes on,
/// nothing is charged for it, and beta is served meanwhile.
#[test]
fn a_duration_the_bytes_cannot_hold_rejects_its_row_with_the_reason() {
    let tenants = ACME.replace("id = \"acme\"", "id = \"acme\"\nminute_allocation = 10");
    let mut d = Daemon::new("1h", &format!("{tenants}\n[[tenants]]\nid = \"beta\"\n"));
    d.start();
    // 10 s of 16-bit 8 kHz mono from ffmpeg, whose data chunk then claims 100:00.
    let mut liar = encoded_with("liar", "wav", 10_000, &["-c:a", "pcm_s16le", "-fflags", "+bitexact"]);
    let data = liar.windows(4).position(|w| w == b"data").unwrap();
    let claimed: u32 = 100 * 60 * 16_000;
    liar[data + 4..data + 8].copy_from_slice(&claimed.to_le_bytes());
    let riff = (claimed as usize + data + 8 - 8) as u32;
    liar[4..8].copy_from_slice(&riff.to_le_bytes());
    d.put("acme", "c1.wav", &liar);
    let good = encoded("good", "wav", 2_000);
    d.put("acme", "good.wav", &good);
    d.put(
        "acme",
        "batch.csv",
        format!(
            "{HEADER}\n{}\n{}\n",
            csv_row("C1", "c1.wav"),
            csv_row("GOOD", "good.wav")
        )
        .as_bytes(),
    );
    d.put("beta", "b1.wav", &audio("b1", 8_044));
    d.put("beta", "b1.csv", beta_csv("B-1", "b1.wav").as_bytes());
    let lines = d.wait_report("acme", "batch.csv.report.csv", 2);
    assert_eq!(lines[0][3], "rejected", "{lines:?}");
    assert_eq!(
        lines[0][4],
        "c1.wav is a WAV file that claims 100:00 of audio, but its 156 KiB hold at most 0:10"
    );
    assert_eq!(lines[1][3], "forwarded", "{lines:?}");
    assert_eq!(d.forwarded()["GOOD"]["duration_ms"], 2_000);
    wait_for("beta's B-1 to be forwarded", T, || d.forwarded().contains_key("B-1"));
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["minutes"]["acme"]["seconds_used"], 2, "{v}");
}
