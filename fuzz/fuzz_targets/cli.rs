//! accel's QEMU-syntax command line: the input split at NUL bytes is argv (without argv[0]).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .take(256)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let first = accel::cli::parse(&args);
    // Parsing is a pure function of argv: the same answer twice.
    let again = accel::cli::parse(&args);
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
});
