//! `bench`: path-length benchmarks, meant to run under QEMU
//! `-icount shift=0`, where `rdtsc` counts executed instructions (of every
//! domain and of the hypervisor) and runs are reproducible. Each figure is
//! the minimum over several repetitions, so a rare preemption in one
//! repetition cannot inflate it. Output lines: `bench: <name> <value>`.
//!
//! `mode=all` measures everything; `mode=partner` (domain 2, beside the
//! bench as domain 1) yields, to give `mode=all` a domain to switch to, and
//! answers every event on the channel the bench offers it (the
//! `evtchn_rtt` figure: an event there and back, so half of it is the path
//! from a send in one domain to the upcall in the other, switch included),
//! then serves the SDK channel the bench offers it last (`interdomain_rtt`:
//! one request over a ring in a granted page, with an event each way, and
//! its response); `mode=storm` issues the longest
//! hypercalls it can (console writes of 4096 control bytes, alone and 64 to
//! a multicall, and a timer storm) so that the hypervisor's report of its
//! longest stretch (`worst_hypercall` in `cargo xtask bench`) covers them.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_VTIMER;
use pvguest_sdk::abi::NULL_TRAP_VECTOR;
use pvguest_sdk::channel::{BackChannel, FrontChannel};
use pvguest_sdk::event::{EventChannel, Port, PortStatus};
use pvguest_sdk::mm::{self, AddressSpace, Pte};
use pvguest_sdk::process::{self, Exit, Process};
use pvguest_sdk::ring_protocol::{Completion, Descriptor};
use pvguest_sdk::trap::TrapContext;
use pvguest_sdk::{event, println, sched, user_program, StartInfo};

pvguest_sdk::entry!(main);

const N: u64 = 1000;
const REPS: usize = 5;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Minimum over REPS of (cycles of `f` run `N` times) / N, in hundredths.
fn measure(mut f: impl FnMut()) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..REPS {
        let t0 = rdtsc();
        for _ in 0..N {
            f();
        }
        best = best.min(rdtsc() - t0);
    }
    best * 100 / N
}

fn report(name: &str, hundredths: u64) {
    println!("bench: {name} {}.{:02}", hundredths / 100, hundredths % 100);
}

fn null_trap() {
    // SAFETY: the null trap enters the hypervisor and returns, changing
    // nothing.
    unsafe { asm!("int {v}", v = const NULL_TRAP_VECTOR, options(nostack)) };
}

/// `xen_version(VERSION)` with the same instruction shape as the null trap.
fn null_hypercall() {
    // SAFETY: xen_version only returns a value in rax.
    unsafe {
        asm!("int {v}", v = const pvguest_sdk::abi::HYPERCALL_VECTOR,
             inlateout("rax") pvguest_sdk::abi::hypercall::XEN_VERSION => _, inlateout("rdi") 0u64 => _, options(nostack))
    };
}

/// `memory_op(current_reservation)`: a hypercall that reads domain state,
/// so it takes the hypervisor lock (the locked fast path).
fn reservation_query() {
    // SAFETY: memory_op(CURRENT_RESERVATION, DOMID_SELF) only returns a value.
    unsafe {
        asm!("int {v}", v = const pvguest_sdk::abi::HYPERCALL_VECTOR,
             inlateout("rax") pvguest_sdk::abi::hypercall::MEMORY_OP => _,
             inlateout("rdi") pvguest_sdk::abi::memory::CURRENT_RESERVATION => _,
             inlateout("rsi") pvguest_sdk::abi::DOMID_SELF => _,
             options(nostack))
    };
}

static UPCALLS: AtomicU64 = AtomicU64::new(0);

fn syscall(ctx: &mut TrapContext) {
    match ctx.rax {
        0 => process::exit_current(ctx.rdi),
        _ => ctx.rax = 1,
    }
}

fn ring3(code: &[u8]) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..REPS {
        let mut p = Process::load(code).expect("load");
        match p.run() {
            Exit::Exited(cycles) => best = best.min(cycles),
            Exit::Killed(ctx) => panic!("benchmark app died at {:#x}", ctx.rip),
        }
    }
    best * 100 / N
}

/// The longest hypercalls this guest can make (see the module docs).
fn storm() {
    use pvguest_sdk::abi::{console_io, hypercall as nr, MulticallEntry};
    static FLOOD: [u8; 4096] = {
        let mut b = [0x1bu8; 4096];
        let mut i = 0;
        while i < 4096 {
            if i % 97 == 96 {
                b[i] = b'\n';
            }
            i += 1;
        }
        b
    };
    let write = [console_io::WRITE, 4096, FLOOD.as_ptr() as u64, 0, 0];
    for _ in 0..16 {
        // SAFETY: console_io only reads the buffer.
        unsafe { pvguest_sdk::hypercall::raw(nr::CONSOLE_IO, write) };
    }
    let mut calls = [MulticallEntry::default(); 64];
    for c in &mut calls {
        c.op = nr::CONSOLE_IO;
        c.args[..5].copy_from_slice(&write);
    }
    for _ in 0..4 {
        // SAFETY: the hypervisor writes only the entries' results and, for
        // an entry it continues, their arguments.
        unsafe { pvguest_sdk::hypercall::raw(nr::MULTICALL, [calls.as_mut_ptr() as u64, 64, 0, 0, 0]) };
        for c in &mut calls {
            c.args[..5].copy_from_slice(&write);
        }
    }
    println!("storm: console floods done");
    for _ in 0..2000 {
        let _ = pvguest_sdk::timer::set_oneshot(pvguest_sdk::time::now_ns() + 1);
        sched::yield_now();
    }
    println!("storm: timer storm done");
}

/// Events received on the channel.
static EVENTS: AtomicU64 = AtomicU64::new(0);
/// The partner's end of the channel (0: none).
static ANSWER_PORT: AtomicU64 = AtomicU64::new(0);

fn count_event(_: Port) {
    EVENTS.fetch_add(1, Ordering::SeqCst);
}

/// The partner answers each event at once, from its upcall.
fn answer(_: Port) {
    let _ = event::send(Port(ANSWER_PORT.load(Ordering::SeqCst) as u32));
}

fn partner(si: &StartInfo) {
    event::init();
    event::enable();
    // The bench (domain 1) offers a port first thing.
    let chan = EventChannel::connect_first_offered(1, 1..16);
    ANSWER_PORT.store(u64::from(chan.port().0), Ordering::SeqCst);
    chan.on_event(answer).expect("handler");
    // A page granted read-only to the bench (reference 8), for the copy
    // figures; granted before the channel answers anything.
    let mut table = pvguest_sdk::grant::GrantTable::setup(1).expect("grant table");
    let page = pvguest_sdk::mm::alloc_page().expect("page");
    let _grant = table.grant(1, page, true).expect("grant");
    for _ in 0..4 * N * REPS as u64 {
        sched::yield_now();
    }
    serve_ring(si);
    // Until the bench closes its end.
    while matches!(chan.status(), Ok(PortStatus::Connected { .. })) {
        sched::yield_now();
    }
}

/// The request that ends `serve_ring`.
const OP_STOP: u16 = 2;

/// The partner's back end of the `interdomain_rtt` channel: finds the
/// bench's ring (its first grant, reference 8) on one of its low ports,
/// then answers every request at once (the answer echoes `len`) until an
/// `OP_STOP` request, sleeping when there is none.
fn serve_ring(si: &StartInfo) {
    let va = si.virt_base + si.nr_pages * 4096;
    let mut ch = 'found: loop {
        for port in 1..16 {
            if let Ok(c) = BackChannel::<Descriptor, Completion>::connect(1, 8, port, va) {
                break 'found c;
            }
        }
        sched::yield_now();
    };
    ch.on_event(count_event).expect("handler");
    let mut stop = false;
    while !stop {
        let n = ch
            .ring
            .serve_up_to(64, |r| {
                stop |= r.op == OP_STOP;
                Completion { id: r.id, status: 0, len: r.len }
            })
            .expect("the bench's ring");
        if ch.ring.push_and_check_notify().expect("the bench's ring") {
            ch.notify().expect("notify");
        }
        if n == 0 {
            event::block_until(|| ch.ring.final_check_for_requests().expect("the bench's ring"));
        }
    }
}

/// One request at a time to the partner over `ch` and its response (min
/// of REPS x N single trips, like `evtchn_rtt`); then the stop request.
fn interdomain_rtt(ch: &mut FrontChannel<Descriptor, Completion>) -> u64 {
    let mut best = u64::MAX;
    let mut round_trip = |op: u16, id: u64| {
        let t0 = rdtsc();
        ch.ring.try_push(Descriptor { id, op, len: id as u32, ..Default::default() }).expect("a free slot");
        if ch.ring.push_and_check_notify().expect("the partner's ring") {
            ch.notify().expect("notify");
        }
        loop {
            if let Some(rsp) = ch.ring.pop_response().expect("the partner's ring") {
                assert!(rsp.id == id && rsp.len == id as u32, "the partner answered {rsp:?} to request {id}");
                break;
            }
            event::block_until(|| ch.ring.final_check_for_responses().expect("the partner's ring"));
        }
        rdtsc() - t0
    };
    for i in 0..N * REPS as u64 {
        best = best.min(round_trip(1, i));
    }
    round_trip(OP_STOP, u64::MAX);
    best
}

/// Round trips of an event to the partner and back (min of REPS x N).
fn evtchn_rtt(chan: &EventChannel) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..REPS {
        for _ in 0..N {
            let seen = EVENTS.load(Ordering::SeqCst);
            let t0 = rdtsc();
            chan.send().expect("send");
            event::block_until(|| EVENTS.load(Ordering::SeqCst) != seen);
            best = best.min(rdtsc() - t0);
        }
    }
    best
}

fn main(si: &'static StartInfo) {
    if si.cmdline().contains("mode=storm") {
        storm();
        return;
    }
    if si.cmdline().contains("mode=partner") {
        partner(si);
        return;
    }
    event::init();
    let chan = EventChannel::offer(2).expect("offer the partner a channel");
    chan.on_event(count_event).expect("handler");
    event::enable();
    process::init(syscall).expect("ring-3 support");
    let floor = measure(null_trap);
    report("bare_trap", floor);
    report("null_hypercall", measure(null_hypercall));
    report("locked_hypercall", measure(reservation_query));

    // Ring 3: a null system call through the direct gate and through the
    // bounced `syscall` instruction, timed inside the app.
    let direct = user_program!(
        bench_direct,
        r#"
        mov r12, 1000
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r13, rax
    2:  mov eax, 2
        int 0x80
        dec r12
        jnz 2b
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, r13
        mov rdi, rax
        xor eax, eax
        int 0x80
        "#
    );
    let bounced = user_program!(
        bench_bounced,
        r#"
        mov r12, 1000
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r13, rax
    2:  mov eax, 2
        syscall
        dec r12
        jnz 2b
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, r13
        mov rdi, rax
        xor eax, eax
        int 0x80
        "#
    );
    report("direct_syscall", ring3(direct));
    report("bounced_syscall", ring3(bounced));

    // Event upcall: mark a bound port pending by hand, then make a null
    // hypercall; the hypervisor delivers the upcall on the way out.
    event::init();
    let port = event::bind_virq(VIRQ_VTIMER, |_| {
        UPCALLS.fetch_add(1, Ordering::Relaxed);
    })
    .expect("bind");
    event::enable();
    let shared = si.shared_info;
    let with_upcall = measure(|| {
        // SAFETY: our own shared-info page; we set exactly the bits the
        // hypervisor would set when raising `port` (pending, selector,
        // upcall pending), as if the event had fired.
        unsafe {
            let pending = (shared + 48 + 8 * u64::from(port.0 / 64)) as *mut u64;
            pending.write_volatile(pending.read_volatile() | 1 << (port.0 % 64));
            let sel = (shared + 8) as *mut u64;
            sel.write_volatile(sel.read_volatile() | 1 << (port.0 / 64));
            (shared as *mut u8).write_volatile(1);
        }
        null_hypercall();
    });
    assert!(UPCALLS.load(Ordering::Relaxed) >= N * REPS as u64, "every round delivered an upcall");
    report("event_upcall", with_upcall);

    // mmu_update: one entry per hypercall, and 32 entries per hypercall.
    let mut space = AddressSpace::new_sharing_kernel().expect("space");
    let target = mm::alloc_page().expect("page");
    for i in 0..32 {
        space.map(0x40_0000 + i * 4096, target, Pte::USER).expect("map");
    }
    space.pin().expect("pin");
    let l1 = space.l1_for(0x40_0000).expect("l1");
    let flip = |k: u64| if k.is_multiple_of(2) { Pte::USER | Pte::WRITABLE | Pte::NO_EXECUTE } else { Pte::USER };
    let mut k = 0u64;
    let single = measure(|| {
        k += 1;
        mm::mmu_update(&[mm::pte_update(l1.mfn, 0, Pte::new(target.mfn, flip(k)))]).expect("update");
    });
    report("mmu_update_single", single);
    let mut batch = [mm::pte_update(l1.mfn, 0, Pte::new(target.mfn, Pte::USER)); 32];
    let mut best = u64::MAX;
    for _ in 0..REPS {
        let t0 = rdtsc();
        for round in 0..N / 32 {
            for (i, req) in batch.iter_mut().enumerate() {
                *req = mm::pte_update(l1.mfn, i, Pte::new(target.mfn, flip(round)));
            }
            mm::mmu_update(&batch).expect("batch");
        }
        best = best.min(rdtsc() - t0);
    }
    report("mmu_update_batched_per_entry", best * 100 / (N / 32 * 32));

    // Domain switch: yield to the partner domain, which yields straight
    // back; each round is two switches.
    let per_round = measure(sched::yield_now);
    report("domain_switch", per_round / 2);
    // An event to the partner and back: wait until it has connected.
    while !matches!(chan.status(), Ok(PortStatus::Connected { .. })) {
        sched::yield_now();
    }
    let rtt = evtchn_rtt(&chan);
    report("evtchn_rtt", rtt * 100);
    report("evtchn_send_remote_upcall", rtt * 50);
    // Copies through the partner's grant (reference 8): 8 bytes (the
    // operation's own cost) and a whole page.
    let mine = mm::alloc_page().expect("page");
    for (name, len) in [("grant_copy_8", 8u16), ("grant_copy_4k", 4096)] {
        report(
            name,
            measure(|| pvguest_sdk::grant::copy_from_grant(2, 8, 0, mine, 0, len).expect("copy through the grant")),
        );
    }
    // A map and unmap pair of the same grant, at a page of our own linear
    // map made not present for it.
    let hole = mm::alloc_page().expect("page");
    mm::update_va_mapping(hole.va(), Pte(0)).expect("unmap our page");
    report(
        "grant_map_unmap",
        measure(|| {
            let m = pvguest_sdk::grant::map(2, 8, hole.va(), true).expect("map the grant");
            m.unmap().map_err(|(_, e)| e).expect("unmap the grant");
        }),
    );
    // A request over a ring in a granted page and its response, with an
    // event each way.
    let mut table = pvguest_sdk::grant::GrantTable::setup(1).expect("grant table");
    let mut ring = FrontChannel::<Descriptor, Completion>::offer(2, &mut table).expect("offer the ring");
    ring.on_event(count_event).expect("handler");
    while !ring.connected() {
        sched::yield_now();
    }
    report("interdomain_rtt", interdomain_rtt(&mut ring) * 100);
    chan.close().expect("close");
    println!("bench: done");
}
