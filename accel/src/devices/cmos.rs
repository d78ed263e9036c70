//! The PC's CMOS RAM and MC146818 real-time clock at ports 0x70 (index) and 0x71 (data).
//!
//! Insert one [`Cmos`] at [`CMOS_PORT_BASE`] with length [`CMOS_PORT_LEN`]: offset 0 is the index
//! register (bit 7 of a write is the NMI-disable bit, bits 0-6 select the register), offset 1
//! reads or writes the selected register.
//!
//! The clock is the host's wall clock in UTC (QEMU's default `-rtc base=utc`; `base=localtime`
//! adds the host time zone's current offset, `base=DATE` starts at DATE), encoded as status
//! register B asks (BCD or binary, 24- or 12-hour). Status A's update-in-progress bit is set
//! during the last 244 µs of every host second, as on the real chip, so Linux's "avoid UIP" read
//! loop sees it clear after at most one short wait. Guest writes to the time registers are
//! ignored (the guest cannot move the host clock); alarms and periodic/update interrupts are not
//! emulated (status C always reads 0, no IRQ 8).
//!
//! The memory-size bytes are the ones QEMU's PC machine sets (base/extended memory in KiB, RAM
//! between 16 MiB and 4 GiB and above 4 GiB in 64 KiB units).

use std::time::{Duration, SystemTime};

use super::bus::BusDevice;
use crate::config::RtcBase;

/// First port of the CMOS/RTC pair.
pub const CMOS_PORT_BASE: u64 = 0x70;
/// Number of ports (index, data).
pub const CMOS_PORT_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: update in progress.
const A_UIP: u8 = 0x80;
/// Status A reset value: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
/// Status B: SET (updates halted while the guest sets the clock).
const B_SET: u8 = 0x80;
/// Status B: data mode binary (clear = BCD).
const B_BINARY: u8 = 0x04;
/// Status B: 24-hour mode (clear = 12-hour, PM in bit 7 of the hours).
const B_24H: u8 = 0x02;
/// Status D: valid RAM and time.
const D_VRT: u8 = 0x80;
/// 12-hour mode: PM flag in the hours register.
const HOURS_PM: u8 = 0x80;

/// The UIP bit is raised this long before each second boundary (244 µs on the MC146818).
const UIP_WINDOW_NS: u32 = 244_000;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Time since the Unix epoch; injectable so tests can pin the clock.
type Clock = Box<dyn Fn() -> Duration + Send>;

fn host_clock() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The host time zone's offset from UTC at `unix_secs`, in seconds (east positive).
fn local_offset(unix_secs: u64) -> i64 {
    let t = libc::time_t::try_from(unix_secs).unwrap_or(0);
    // SAFETY: an all-zero `tm` is a valid value for this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant and
    // writes only into `tm`.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok { tm.tm_gmtoff } else { 0 }
}

/// The host clock shifted by the host time zone's current offset.
fn localtime_clock() -> Clock {
    Box::new(|| {
        let now = host_clock();
        let offset = local_offset(now.as_secs());
        if offset >= 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now.saturating_sub(Duration::from_secs(offset.unsigned_abs()))
        }
    })
}

/// The clock for `-rtc base=`.
fn clock_for(base: RtcBase) -> Clock {
    match base {
        RtcBase::Utc => Box::new(host_clock),
        RtcBase::Localtime => {
            // The first conversion loads the time zone (glibc reads TZ and maybe a zoneinfo
            // file); do it now, before accel confines itself, not on a vCPU thread later.
            local_offset(host_clock().as_secs());
            localtime_clock()
        }
        RtcBase::Fixed(start) => {
            let started = std::time::Instant::now();
            let start = Duration::from_secs(u64::try_from(start).unwrap_or(0));
            Box::new(move || start + started.elapsed())
        }
    }
}

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    /// 1 = Sunday ... 7 = Saturday (the RTC's convention).
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    /// Converts seconds since the Unix epoch (proleptic Gregorian calendar, UTC).
    fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097); // day of era, 0..146096
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year
        let mp = (5 * doy + 2) / 153; // March = 0
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            // 1970-01-01 was a Thursday (weekday 5).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
            hour: (rem / 3_600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// CMOS RAM + RTC. See the module documentation.
pub struct Cmos {
    index: u8,
    nmi_disabled: bool,
    ram: [u8; 128],
    clock: Clock,
}

impl Cmos {
    /// `mem_below_4g`: bytes of guest RAM below 4 GiB (counted from address 0);
    /// `mem_above_4g`: bytes of guest RAM from 4 GiB up.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, Box::new(host_clock))
    }

    /// [`Cmos::new`] with the clock `-rtc base=` asks for.
    pub fn with_base(mem_below_4g: u64, mem_above_4g: u64, base: RtcBase) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, clock_for(base))
    }

    fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: Clock) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = A_DEFAULT;
        ram[usize::from(REG_B)] = B_24H;
        ram[usize::from(REG_D)] = D_VRT;

        let mut set16 = |lo: usize, v: u64| {
            let v = v.min(0xffff);
            ram[lo] = v as u8;
            ram[lo + 1] = (v >> 8) as u8;
        };
        // Base memory in KiB (at most 640).
        set16(0x15, (mem_below_4g / KIB).min(640));
        // Extended memory above 1 MiB in KiB (saturates at 65535 KiB).
        let ext_kib = mem_below_4g.saturating_sub(MIB) / KIB;
        set16(0x17, ext_kib);
        set16(0x30, ext_kib);
        // Memory between 16 MiB and 4 GiB, in 64 KiB units.
        set16(0x34, mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB));
        // Memory above 4 GiB, in 64 KiB units, 24 bits.
        let high = (mem_above_4g / (64 * KIB)).min(0xff_ffff);
        ram[0x5b] = high as u8;
        ram[0x5c] = (high >> 8) as u8;
        ram[0x5d] = (high >> 16) as u8;

        Cmos {
            index: 0,
            nmi_disabled: false,
            ram,
            clock,
        }
    }

    /// Whether the guest last wrote the index register with the NMI-disable bit set.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// Encodes a clock field as status B says (BCD or binary).
    fn encode(&self, v: u8) -> u8 {
        if self.ram[usize::from(REG_B)] & B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.ram[usize::from(REG_B)] & B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOURS_PM } else { 0 };
        self.encode(h12) | pm
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let time_reg = matches!(
            reg,
            REG_SECONDS
                | REG_MINUTES
                | REG_HOURS
                | REG_WEEKDAY
                | REG_DAY
                | REG_MONTH
                | REG_YEAR
                | REG_CENTURY
        );
        if time_reg {
            let now = DateTime::from_unix((self.clock)().as_secs());
            return match reg {
                REG_SECONDS => self.encode(now.second),
                REG_MINUTES => self.encode(now.minute),
                REG_HOURS => self.encode_hours(now.hour),
                REG_WEEKDAY => self.encode(now.weekday),
                REG_DAY => self.encode(now.day),
                REG_MONTH => self.encode(now.month),
                REG_YEAR => self.encode(now.year.rem_euclid(100) as u8),
                _ => self.encode(now.year.div_euclid(100).clamp(0, 99) as u8),
            };
        }
        match reg {
            REG_A => {
                let updating = self.ram[usize::from(REG_B)] & B_SET == 0
                    && (self.clock)().subsec_nanos() >= 1_000_000_000 - UIP_WINDOW_NS;
                (self.ram[usize::from(REG_A)] & !A_UIP) | if updating { A_UIP } else { 0 }
            }
            // No alarm/periodic/update interrupts are generated: nothing is ever pending.
            REG_C => 0,
            REG_D => D_VRT,
            _ => self.ram[usize::from(reg & 0x7f)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => {
                log::debug!("cmos: ignoring write {value:#04x} to clock register {reg:#04x}");
            }
            REG_A => self.ram[usize::from(REG_A)] = value & !A_UIP,
            REG_C | REG_D => log::debug!("cmos: ignoring write to read-only register {reg:#04x}"),
            _ => self.ram[usize::from(reg & 0x7f)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            log::debug!("cmos: {}-byte read at offset {offset} ignored", data.len());
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            1 => self.read_register(self.index),
            // The index register is write-only.
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            log::debug!("cmos: {}-byte write at offset {offset} ignored", data.len());
            return;
        };
        match offset {
            0 => {
                self.nmi_disabled = value & 0x80 != 0;
                self.index = value & 0x7f;
            }
            1 => self.write_register(self.index, value),
            _ => log::debug!("cmos: write to unknown offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21 01:23:45 UTC, a Saturday.
    const T0: u64 = 1_795_224_225;

    fn fixed(secs: u64, nanos: u32) -> Clock {
        Box::new(move || Duration::new(secs, nanos))
    }

    fn reg(cmos: &mut Cmos, r: u8) -> u8 {
        cmos.write(0, &[r]);
        let mut b = [0u8];
        cmos.read(1, &mut b);
        b[0]
    }

    fn set(cmos: &mut Cmos, r: u8, v: u8) {
        cmos.write(0, &[r]);
        cmos.write(1, &[v]);
    }

    #[test]
    fn clock_registers_in_bcd_24h() {
        let mut c = Cmos::with_clock(0, 0, fixed(T0, 500_000_000));
        let got: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&r| reg(&mut c, r))
            .collect();
        assert_eq!(got, vec![0x45, 0x23, 0x01, 0x07, 0x21, 0x11, 0x26, 0x20]);
        assert_eq!(reg(&mut c, REG_B), 0x02);
        assert_eq!(reg(&mut c, REG_D), 0x80);
        assert_eq!(reg(&mut c, REG_C), 0x00);
    }

    #[test]
    fn binary_and_12_hour_modes_follow_status_b() {
        // 2000-02-29 13:05:09 UTC, a Tuesday (leap day).
        let mut c = Cmos::with_clock(0, 0, fixed(951_829_509, 0));
        set(&mut c, REG_B, B_BINARY | B_24H);
        assert_eq!(reg(&mut c, REG_HOURS), 13);
        assert_eq!(reg(&mut c, REG_SECONDS), 9);
        assert_eq!(reg(&mut c, REG_DAY), 29);
        assert_eq!(reg(&mut c, REG_MONTH), 2);
        assert_eq!(reg(&mut c, REG_YEAR), 0);
        assert_eq!(reg(&mut c, REG_CENTURY), 20);
        assert_eq!(reg(&mut c, REG_WEEKDAY), 3);
        set(&mut c, REG_B, 0);
        assert_eq!(reg(&mut c, REG_HOURS), 0x80 | 0x01, "1 PM in BCD 12h");
        set(&mut c, REG_B, B_BINARY);
        assert_eq!(reg(&mut c, REG_HOURS), 0x80 | 1);
    }

    #[test]
    fn uip_is_set_only_just_before_a_second_boundary() {
        let mut c = Cmos::with_clock(0, 0, fixed(T0, 999_900_000));
        assert_eq!(reg(&mut c, REG_A), A_UIP | 0x26);
        let mut c = Cmos::with_clock(0, 0, fixed(T0, 100_000));
        assert_eq!(reg(&mut c, REG_A), 0x26);
        // While the guest holds SET, the clock does not update.
        let mut c = Cmos::with_clock(0, 0, fixed(T0, 999_900_000));
        set(&mut c, REG_B, B_SET | B_24H);
        assert_eq!(reg(&mut c, REG_A), 0x26);
        // UIP is read-only; the rate bits are writable.
        set(&mut c, REG_A, 0xa5);
        assert_eq!(reg(&mut c, REG_A), 0x25);
    }

    #[test]
    fn rtc_base_date_starts_the_clock_there() {
        // -rtc base=2006-06-17T16:01:21
        let mut c = Cmos::with_base(0, 0, RtcBase::Fixed(1_150_560_081));
        assert_eq!(reg(&mut c, REG_YEAR), 0x06);
        assert_eq!(reg(&mut c, REG_MONTH), 0x06);
        assert_eq!(reg(&mut c, REG_DAY), 0x17);
        assert_eq!(reg(&mut c, REG_HOURS), 0x16);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
    }

    #[test]
    fn host_clock_reads_are_plausible() {
        let mut c = Cmos::new(0, 0);
        let is_bcd = |v: u8| (v & 0x0f) <= 9 && (v >> 4) <= 9;
        let sec = reg(&mut c, REG_SECONDS);
        assert!(is_bcd(sec) && sec <= 0x59, "seconds {sec:#x}");
        let min = reg(&mut c, REG_MINUTES);
        assert!(is_bcd(min) && min <= 0x59, "minutes {min:#x}");
        let hour = reg(&mut c, REG_HOURS);
        assert!(is_bcd(hour) && hour <= 0x23, "hours {hour:#x}");
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        // UIP lasts 244 µs per second: two reads 1 ms apart cannot both see it.
        let a1 = reg(&mut c, REG_A);
        std::thread::sleep(Duration::from_millis(1));
        let a2 = reg(&mut c, REG_A);
        assert_eq!((a1 | a2) & 0x7f, 0x26);
        assert!(a1 & a2 & A_UIP == 0);
    }

    #[test]
    fn memory_size_bytes_match_qemu() {
        // 3 GiB below 4 GiB, 5 GiB above.
        let mut c = Cmos::new(3 << 30, 5 << 30);
        assert_eq!((reg(&mut c, 0x15), reg(&mut c, 0x16)), (0x80, 0x02)); // 640 KiB
        assert_eq!((reg(&mut c, 0x17), reg(&mut c, 0x18)), (0xff, 0xff)); // saturated
        assert_eq!((reg(&mut c, 0x30), reg(&mut c, 0x31)), (0xff, 0xff));
        // (3 GiB - 16 MiB) / 64 KiB = 0xbf00
        assert_eq!((reg(&mut c, 0x34), reg(&mut c, 0x35)), (0x00, 0xbf));
        // 5 GiB / 64 KiB = 0x14000
        let high = [reg(&mut c, 0x5b), reg(&mut c, 0x5c), reg(&mut c, 0x5d)];
        assert_eq!(high, [0x00, 0x40, 0x01]);

        // 128 MiB, nothing above 4 GiB.
        let mut c = Cmos::new(128 << 20, 0);
        // 127 MiB = 130048 KiB saturates; (128 - 16) MiB / 64 KiB = 1792 = 0x700.
        assert_eq!((reg(&mut c, 0x34), reg(&mut c, 0x35)), (0x00, 0x07));
        assert_eq!(
            [reg(&mut c, 0x5b), reg(&mut c, 0x5c), reg(&mut c, 0x5d)],
            [0; 3]
        );
        // 8 MiB: 7 MiB extended = 7168 KiB = 0x1c00, nothing above 16 MiB.
        let mut c = Cmos::new(8 << 20, 0);
        assert_eq!((reg(&mut c, 0x17), reg(&mut c, 0x18)), (0x00, 0x1c));
        assert_eq!((reg(&mut c, 0x34), reg(&mut c, 0x35)), (0, 0));
    }

    #[test]
    fn index_port_nmi_bit_and_ram() {
        let mut c = Cmos::new(0, 0);
        c.write(0, &[0x80 | 0x40]);
        assert!(c.nmi_disabled());
        c.write(1, &[0x5a]);
        c.write(0, &[0x40]);
        assert!(!c.nmi_disabled());
        let mut b = [0u8];
        c.read(1, &mut b);
        assert_eq!(b, [0x5a]);
        c.read(0, &mut b);
        assert_eq!(b, [0xff], "index port reads as 0xff");
        // Clock writes are ignored: the seconds still come from the clock.
        let mut c = Cmos::with_clock(0, 0, fixed(T0, 0));
        set(&mut c, REG_SECONDS, 0x00);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x45);
    }
}
