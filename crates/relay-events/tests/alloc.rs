//! Bounded allocation per message: the peak heap of one decode, measured with a counting global
//! allocator, stays under [`BASE`] plus [`PER_BYTE`] times the message size, for valid frames,
//! the regression corpus (allocation bombs included) and mutated frames.
//!
//! Its own test binary with a single test, because the allocator counts the whole process: no
//! other test may run beside it.

mod support;

use peak_alloc::PeakAlloc;
use relay_events::{decode, decode_with_writer_schema, schemas, EventKind, Scope};
use support::*;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// What any decode may take regardless of size: apache-avro resolves the writer schema's names
/// and resolves the value against the reader (a few KiB each), a Confluent writer schema is
/// copied once to read its uuid field as a string, and an array may reserve value slots for up
/// to 256 items (~31 KiB; `wire/bounds.rs`). Measured worst: 43 KiB, 256 empty purposes read
/// with a registry writer schema.
const BASE: usize = 64 * 1024;
/// Per byte of message: the body's strings are copied out (zeroed buffer, then `String`), and
/// again while resolving against the reader.
const PER_BYTE: usize = 8;

fn bound(len: usize) -> usize {
    BASE + PER_BYTE * len
}

/// The peak heap growth while `f` runs.
fn peak_of(f: impl FnOnce()) -> usize {
    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    f();
    HEAP.peak_usage().saturating_sub(before)
}

#[test]
fn peak_heap_per_decode_is_bounded() {
    // The bundled schemas are parsed once per process; that is not per message.
    let _ = decode(&valid_frames()[0]);

    let mut inputs: Vec<(String, Vec<u8>)> =
        corpus().into_iter().map(|e| (e.name, e.bytes)).collect();
    inputs.extend(
        valid_frames()
            .into_iter()
            .enumerate()
            .map(|(i, f)| (format!("valid frame {i}"), f)),
    );
    // Arrays: each item costs apache-avro a value slot or two for as little as one byte of
    // message, up to the most the bounds check lets through.
    for n in [1, 32, 64, 128, 256] {
        let mut ev = sample(EventKind::ConsentGranted);
        ev.scope = Scope::Purposes(vec![String::new(); n]);
        inputs.push((
            format!("{n} empty purposes"),
            frame(schemas::newest(ev.kind), &ev),
        ));
    }
    // Deterministic mutations of the valid frames: every single-byte overwrite with 0xff (a
    // varint continuation: lengths and counts run long) and with 0x7f (the largest one-byte
    // length), at every position.
    let mut mutated = Vec::new();
    for (i, f) in valid_frames().into_iter().enumerate() {
        for pos in 10..f.len() {
            for byte in [0xff, 0x7f] {
                let mut m = f.clone();
                m[pos] = byte;
                mutated.push((format!("valid frame {i} with {byte:#04x} at {pos}"), m));
            }
        }
    }
    inputs.extend(mutated);

    let mut worst = (0.0f64, String::new(), 0usize, 0usize);
    for (name, bytes) in &inputs {
        let single = peak_of(|| drop(decode(bytes)));
        let confluent = bytes.get(10..).map_or(0, |body| {
            schemas::all()
                .iter()
                .map(|s| peak_of(|| drop(decode_with_writer_schema(&s.schema, body))))
                .max()
                .unwrap_or(0)
        });
        let peak = single.max(confluent);
        assert!(
            peak <= bound(bytes.len()),
            "{name}: {peak} bytes at peak for a {}-byte message, bound {}",
            bytes.len(),
            bound(bytes.len())
        );
        let ratio = peak as f64 / bound(bytes.len()) as f64;
        if ratio > worst.0 {
            worst = (ratio, name.clone(), peak, bytes.len());
        }
    }
    eprintln!(
        "{} inputs; closest to the bound: {} ({} bytes at peak for {} bytes, {:.0}% of the bound)",
        inputs.len(),
        worst.1,
        worst.2,
        worst.3,
        worst.0 * 100.0
    );
}
