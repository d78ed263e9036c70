//! `vu-blk-bench`: drives a vhost-user-blk backend directly (no VM) with the userspace driver
//! and prints one machine-readable result line.
//!
//! ```text
//! vu-blk-bench --socket /tmp/blk.sock --pattern randread --bs 4096 --qd 32 --seconds 10
//! pattern=randread bs=4096 qd=32 queues=1 seconds=10.000 ios=... iops=... mib_s=... lat_mean_us=... lat_p99_us=... errors=0 kicks=...
//! ```
//!
//! `--qd` requests per queue are kept in flight; completions are collected by sleeping on
//! the call fds (EVENT_IDX keeps kicks and interrupts few) or, with `--poll`, by spinning.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use vu_spec::blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vu_testkit::driver::DriverOptions;
use vu_testkit::driver::blk::{BlkDriver, BlkSlot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pattern {
    Randread,
    Randwrite,
    Read,
    Write,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Randread => "randread",
            Pattern::Randwrite => "randwrite",
            Pattern::Read => "read",
            Pattern::Write => "write",
        }
    }
    fn is_write(self) -> bool {
        matches!(self, Pattern::Randwrite | Pattern::Write)
    }
    fn is_random(self) -> bool {
        matches!(self, Pattern::Randread | Pattern::Randwrite)
    }
}

/// Benchmark a vhost-user-blk backend through its socket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The backend's vhost-user socket.
    #[arg(long, short = 's')]
    socket: std::path::PathBuf,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    pattern: Pattern,
    /// Request size in bytes (a multiple of 512).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Measurement time in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Queues to use.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Bytes of the disk to touch (default: the whole capacity).
    #[arg(long)]
    size: Option<u64>,
    /// Put each request in an indirect descriptor table.
    #[arg(long)]
    indirect: bool,
    /// Spin on the used rings instead of sleeping on the call fds.
    #[arg(long)]
    poll: bool,
    /// Print a JSON object instead of key=value pairs.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the backend socket.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
}

/// xorshift64*: fast, good enough to scatter offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Offsets {
    blocks: u64,
    bs: u64,
    random: bool,
    rng: Rng,
    cursor: u64,
}

impl Offsets {
    /// Next request's start sector.
    fn next_sector(&mut self) -> u64 {
        let block = if self.random {
            self.rng.next() % self.blocks
        } else {
            let b = self.cursor;
            self.cursor = (self.cursor + 1) % self.blocks;
            b
        };
        block * self.bs / 512
    }
}

struct Results {
    ios: u64,
    kicks: u64,
    errors: u64,
    elapsed: Duration,
    lat_ns: Vec<u64>,
}

fn token(q: usize, slot: usize) -> u64 {
    ((q as u64) << 32) | slot as u64
}

fn run(args: &Args) -> Result<Results, String> {
    if args.bs == 0 || !args.bs.is_multiple_of(512) {
        return Err("--bs must be a non-zero multiple of 512".into());
    }
    if args.qd == 0 || args.queues == 0 || args.seconds <= 0.0 {
        return Err("--qd, --queues and --seconds must be positive".into());
    }
    let descs_per_req = if args.indirect { 1 } else { 3 };
    let queue_size = (args.qd * descs_per_req)
        .next_power_of_two()
        .clamp(64, 32768);
    let per_req = u64::from(args.bs).next_multiple_of(4096) + 4096;
    let mem_size = (args.queues * args.qd) as u64 * per_req + (8 << 20);
    let opts = DriverOptions {
        num_queues: args.queues,
        queue_size: u16::try_from(queue_size).map_err(|_| "queue too large")?,
        mem_size: mem_size.next_multiple_of(2 << 20),
        ..DriverOptions::default()
    };
    let timeout = Duration::from_secs_f64(args.connect_timeout);
    let mut b = BlkDriver::connect(&args.socket, timeout, opts).map_err(|e| e.to_string())?;
    let capacity = b.capacity_bytes();
    let size = args.size.unwrap_or(capacity).min(capacity);
    let blocks = size / u64::from(args.bs);
    if blocks == 0 {
        return Err(format!(
            "disk of {capacity} bytes holds no {}-byte block",
            args.bs
        ));
    }
    let mut offsets = Offsets {
        blocks,
        bs: u64::from(args.bs),
        random: args.pattern.is_random(),
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        cursor: 0,
    };
    let req_type = if args.pattern.is_write() {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };

    let mut slots: Vec<Vec<BlkSlot>> = Vec::with_capacity(args.queues);
    for _ in 0..args.queues {
        let mut qs = Vec::with_capacity(args.qd);
        for _ in 0..args.qd {
            let s = b.alloc_slot(args.bs).map_err(|e| e.to_string())?;
            let fill = vec![0xa5u8; args.bs as usize];
            b.driver()
                .write(s.data_addr(), &fill)
                .map_err(|e| e.to_string())?;
            qs.push(s);
        }
        slots.push(qs);
    }
    if args.poll {
        for q in 0..args.queues {
            b.driver()
                .disable_interrupts(q)
                .map_err(|e| e.to_string())?;
        }
    }

    let mut started = vec![vec![Instant::now(); args.qd]; args.queues];
    let mut lat_ns = Vec::with_capacity(1 << 20);
    let (mut ios, mut errors, mut in_flight) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    for (q, qs) in slots.iter().enumerate() {
        for (i, s) in qs.iter().enumerate() {
            started[q][i] = Instant::now();
            b.submit_slot(
                q,
                s,
                req_type,
                offsets.next_sector(),
                args.bs,
                args.indirect,
                token(q, i),
            )
            .map_err(|e| e.to_string())?;
            in_flight += 1;
        }
        b.driver().notify(q).map_err(|e| e.to_string())?;
    }
    let mut end = None;
    while in_flight > 0 {
        let now = Instant::now();
        if end.is_none() && now >= deadline {
            end = Some(now);
        }
        if end.is_some_and(|e| now.duration_since(e) > Duration::from_secs(30)) {
            return Err(format!("{in_flight} requests never completed"));
        }
        if !args.poll {
            b.driver()
                .wait_any(Duration::from_millis(200))
                .map_err(|e| e.to_string())?;
        }
        for (q, qs) in slots.iter().enumerate() {
            let mut resubmitted = false;
            while let Some(c) = b.driver().poll_used(q).map_err(|e| e.to_string())? {
                let done = Instant::now();
                let i = (c.token & 0xffff_ffff) as usize;
                in_flight -= 1;
                if b.slot_status(&qs[i]).map_err(|e| e.to_string())? != 0 {
                    errors += 1;
                }
                if end.is_none() {
                    ios += 1;
                    lat_ns.push(done.duration_since(started[q][i]).as_nanos() as u64);
                    started[q][i] = done;
                    b.submit_slot(
                        q,
                        &qs[i],
                        req_type,
                        offsets.next_sector(),
                        args.bs,
                        args.indirect,
                        c.token,
                    )
                    .map_err(|e| e.to_string())?;
                    in_flight += 1;
                    resubmitted = true;
                }
            }
            if resubmitted {
                b.driver().notify(q).map_err(|e| e.to_string())?;
            }
        }
    }
    let elapsed = end.unwrap_or_else(Instant::now).duration_since(start);
    let mut kicks = 0;
    for q in 0..args.queues {
        kicks += b
            .driver()
            .queue(q)
            .map_err(|e| e.to_string())?
            .stats()
            .kicks;
    }
    Ok(Results {
        ios,
        kicks,
        errors,
        elapsed,
        lat_ns,
    })
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    let mut r = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vu-blk-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    r.lat_ns.sort_unstable();
    let secs = r.elapsed.as_secs_f64();
    let iops = r.ios as f64 / secs;
    let mib_s = iops * f64::from(args.bs) / f64::from(1u32 << 20);
    let mean_us = if r.lat_ns.is_empty() {
        0.0
    } else {
        r.lat_ns.iter().sum::<u64>() as f64 / r.lat_ns.len() as f64 / 1000.0
    };
    let p99_us = r
        .lat_ns
        .get((r.lat_ns.len() * 99 / 100).min(r.lat_ns.len().saturating_sub(1)))
        .map_or(0.0, |&n| n as f64 / 1000.0);
    if args.json {
        let v = serde_json::json!({
            "pattern": args.pattern.name(), "bs": args.bs, "qd": args.qd, "queues": args.queues,
            "seconds": secs, "ios": r.ios, "iops": iops, "mib_s": mib_s,
            "lat_mean_us": mean_us, "lat_p99_us": p99_us, "errors": r.errors, "kicks": r.kicks,
        });
        println!("{v}");
    } else {
        println!(
            "pattern={} bs={} qd={} queues={} seconds={secs:.3} ios={} iops={iops:.0} mib_s={mib_s:.2} lat_mean_us={mean_us:.1} lat_p99_us={p99_us:.1} errors={} kicks={}",
            args.pattern.name(),
            args.bs,
            args.qd,
            args.queues,
            r.ios,
            r.errors,
            r.kicks
        );
    }
    if r.errors > 0 {
        eprintln!("vu-blk-bench: {} requests failed", r.errors);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
