//! The Avro schemas of `schemas/`, compiled into the binary so that decoding needs no files and no
//! network, each with the CRC-64-AVRO (Rabin) fingerprint that single-object encoding names it by.
//!
//! The fingerprint is computed here from the schema text, not with apache-avro's
//! `Schema::fingerprint`: apache-avro 0.21 (like the Python `avro` 1.12) leaves a logical-typed
//! primitive as `{"type":"string"}` in the Parsing Canonical Form, where the spec's [PRIMITIVES]
//! rule and the Java reference (`SchemaNormalization`, used by Java's single-object encoder) write
//! `"string"`. Our headers carry `event_id` (uuid) and `occurred_at` (timestamp-millis), so the two
//! differ for every record. We write the spec's fingerprint and accept both when decoding.
//!
//! A published version is immutable: data written with it may sit in Kafka for the retention
//! period. To evolve a record, add `schemas/<Record>.v<N+1>.avsc` (backward compatible with vN)
//! and a line in `SOURCES`; the evolution test then checks it against its predecessor.

use std::sync::OnceLock;

use apache_avro::{rabin::Rabin, Schema};
use serde_json::Value;

use crate::EventKind;

/// Namespace of every event record.
pub const NAMESPACE: &str = "de.consentrelay.events";

struct Source {
    kind: EventKind,
    version: u32,
    file_name: &'static str,
    json: &'static str,
}

macro_rules! source {
    ($kind:ident, $version:literal, $file:literal) => {
        Source {
            kind: EventKind::$kind,
            version: $version,
            file_name: $file,
            json: include_str!(concat!("../../../schemas/", $file)),
        }
    };
}

const SOURCES: &[Source] = &[
    source!(ConsentGranted, 1, "ConsentGranted.v1.avsc"),
    source!(ConsentWithdrawn, 1, "ConsentWithdrawn.v1.avsc"),
    source!(Unsubscribed, 1, "Unsubscribed.v1.avsc"),
    source!(ErasureRequested, 1, "ErasureRequested.v1.avsc"),
    // v2: `Contact` gains the postal address and the company size (the partner hand-off needs them).
    source!(ConsentGranted, 2, "ConsentGranted.v2.avsc"),
    source!(ConsentWithdrawn, 2, "ConsentWithdrawn.v2.avsc"),
    source!(Unsubscribed, 2, "Unsubscribed.v2.avsc"),
    source!(ErasureRequested, 2, "ErasureRequested.v2.avsc"),
];

/// One version of one record schema.
#[derive(Debug)]
pub struct BundledSchema {
    pub kind: EventKind,
    /// 1, 2, ... as in the file name.
    pub version: u32,
    /// File name under `schemas/`, e.g. `ConsentGranted.v1.avsc`.
    pub file_name: &'static str,
    /// The file's text, as registered with a schema registry.
    pub json: &'static str,
    pub schema: Schema,
    /// `schema` as the decoder reads it (uuid fields as strings, see `wire::uuids_as_strings`),
    /// made once rather than per message.
    pub(crate) decoding: Schema,
    /// CRC-64-AVRO of the spec's Parsing Canonical Form, as a number (the spec's notation); the
    /// wire carries its little-endian bytes. This is what we write.
    pub fingerprint: u64,
    /// The fingerprint apache-avro 0.21 and Python `avro` compute (see the module doc); accepted
    /// when decoding so that producers using those libraries are not dead-lettered.
    pub apache_avro_fingerprint: u64,
}

impl BundledSchema {
    /// `de.consentrelay.events.<Record>`.
    pub fn full_name(&self) -> String {
        format!("{NAMESPACE}.{}", self.kind.name())
    }
}

/// CRC-64-AVRO of the Parsing Canonical Form of the schema `json`, as the spec and Java compute it.
pub fn fingerprint_of_json(json: &str) -> Result<u64, String> {
    parsing_canonical_form(json).map(|pcf| crc64_avro(pcf.as_bytes()))
}

/// What apache-avro's `Schema::fingerprint::<Rabin>()` computes, as a number.
pub fn apache_avro_fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    // apache-avro hands out the little-endian bytes, i.e. already in wire order.
    let bytes: [u8; 8] = fp
        .bytes
        .as_slice()
        .try_into()
        .expect("a Rabin fingerprint has 8 bytes");
    u64::from_le_bytes(bytes)
}

/// The 64-bit Rabin fingerprint of the Avro spec ("Schema Fingerprints").
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The spec's Parsing Canonical Form of the schema `json`, written the way Java's
/// `SchemaNormalization.toParsingForm` does: any schema whose type is a primitive becomes that
/// primitive's name, whatever other attributes (logicalType, ...) it has.
pub fn parsing_canonical_form(json: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("schema is not JSON: {e}"))?;
    let mut out = String::with_capacity(json.len() / 2);
    pcf(&value, None, &mut out)?;
    Ok(out)
}

fn pcf(schema: &Value, namespace: Option<&str>, out: &mut String) -> Result<(), String> {
    match schema {
        Value::String(name) if PRIMITIVES.contains(&name.as_str()) => push_str(out, name),
        Value::String(reference) => push_str(out, &qualify(reference, None, namespace).0),
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(branch, namespace, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => match map.get("type") {
            Some(Value::String(ty)) => match ty.as_str() {
                t if PRIMITIVES.contains(&t) => push_str(out, t),
                "array" => {
                    out.push_str(r#"{"type":"array","items":"#);
                    pcf(
                        map.get("items").ok_or("array without items")?,
                        namespace,
                        out,
                    )?;
                    out.push('}');
                }
                "map" => {
                    out.push_str(r#"{"type":"map","values":"#);
                    pcf(
                        map.get("values").ok_or("map without values")?,
                        namespace,
                        out,
                    )?;
                    out.push('}');
                }
                "record" | "error" | "enum" | "fixed" => {
                    let name = map
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("{ty} without a name"))?;
                    let declared = map.get("namespace").and_then(Value::as_str);
                    let (full, inner_ns) = qualify(name, declared, namespace);
                    out.push_str(r#"{"name":"#);
                    push_str(out, &full);
                    out.push_str(r#","type":"#);
                    push_str(out, if ty == "error" { "record" } else { ty });
                    match ty.as_str() {
                        "enum" => {
                            out.push_str(r#","symbols":"#);
                            let symbols = map.get("symbols").ok_or("enum without symbols")?;
                            out.push_str(
                                &serde_json::to_string(symbols).map_err(|e| e.to_string())?,
                            );
                        }
                        "fixed" => {
                            let size = map
                                .get("size")
                                .and_then(Value::as_u64)
                                .ok_or("fixed without size")?;
                            out.push_str(&format!(r#","size":{size}"#));
                        }
                        _ => {
                            out.push_str(r#","fields":["#);
                            let fields = map
                                .get("fields")
                                .and_then(Value::as_array)
                                .ok_or("record without fields")?;
                            for (i, field) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = field
                                    .get("name")
                                    .and_then(Value::as_str)
                                    .ok_or("field without a name")?;
                                out.push_str(r#"{"name":"#);
                                push_str(out, fname);
                                out.push_str(r#","type":"#);
                                pcf(
                                    field.get("type").ok_or("field without a type")?,
                                    inner_ns.as_deref(),
                                    out,
                                )?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                // {"type": "SomeNamedType"}: a reference with attributes.
                reference => push_str(out, &qualify(reference, None, namespace).0),
            },
            Some(nested @ (Value::Object(_) | Value::Array(_))) => pcf(nested, namespace, out)?,
            _ => return Err("schema object without a type".into()),
        },
        other => return Err(format!("not a schema: {other}")),
    }
    Ok(())
}

/// The full name of a named type and the namespace its children inherit ([FULLNAMES]).
fn qualify(
    name: &str,
    declared: Option<&str>,
    enclosing: Option<&str>,
) -> (String, Option<String>) {
    if let Some((ns, _)) = name.rsplit_once('.') {
        return (name.to_owned(), Some(ns.to_owned()));
    }
    let ns = match declared {
        Some("") => None,
        Some(ns) => Some(ns),
        None => enclosing,
    };
    match ns {
        Some(ns) => (format!("{ns}.{name}"), Some(ns.to_owned())),
        None => (name.to_owned(), None),
    }
}

/// [STRINGS]: serde_json writes non-ASCII as UTF-8, escaping only what JSON requires.
fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str serializes"));
}

/// The full name (`namespace.Name`) of a named schema, `None` for primitives, arrays, unions, ...
pub fn full_name(schema: &Schema) -> Option<String> {
    schema.name().map(|name| name.fullname(None))
}

/// Every bundled schema, grouped by record in [`EventKind::ALL`] order, oldest version first.
pub fn all() -> &'static [BundledSchema] {
    static ALL: OnceLock<Vec<BundledSchema>> = OnceLock::new();
    ALL.get_or_init(load)
}

/// Panics on a broken bundle: the schemas are compiled in, so any unit test catches it first.
fn load() -> Vec<BundledSchema> {
    let mut out: Vec<BundledSchema> = SOURCES
        .iter()
        .map(|src| {
            let schema = Schema::parse_str(src.json)
                .unwrap_or_else(|e| panic!("bundled schema {} does not parse: {e}", src.file_name));
            let expected = format!("{NAMESPACE}.{}", src.kind.name());
            assert_eq!(
                full_name(&schema).as_deref(),
                Some(expected.as_str()),
                "bundled schema {} has the wrong record name",
                src.file_name
            );
            BundledSchema {
                kind: src.kind,
                version: src.version,
                file_name: src.file_name,
                json: src.json,
                fingerprint: fingerprint_of_json(src.json)
                    .unwrap_or_else(|e| panic!("bundled schema {}: {e}", src.file_name)),
                apache_avro_fingerprint: apache_avro_fingerprint(&schema),
                decoding: crate::wire::uuids_as_strings(&schema).into_owned(),
                schema,
            }
        })
        .collect();
    let kind_rank = |k: EventKind| EventKind::ALL.iter().position(|&x| x == k);
    out.sort_by_key(|s| (kind_rank(s.kind), s.version));
    for kind in EventKind::ALL {
        let versions: Vec<u32> = out
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.version)
            .collect();
        let expected: Vec<u32> = (1..=versions.len() as u32).collect();
        assert_eq!(
            versions,
            expected,
            "versions of {} must be 1..=N",
            kind.name()
        );
    }
    for (i, a) in out.iter().enumerate() {
        // Two versions with one fingerprint would make single-object decoding ambiguous.
        let fps = |s: &BundledSchema| [s.fingerprint, s.apache_avro_fingerprint];
        if let Some(b) = out[i + 1..]
            .iter()
            .find(|b| fps(b).iter().any(|fp| fps(a).contains(fp)))
        {
            panic!(
                "{} and {} have the same canonical form",
                a.file_name, b.file_name
            );
        }
    }
    out
}

/// The schema a single-object frame names, by either fingerprint.
pub fn by_fingerprint(fingerprint: u64) -> Option<&'static BundledSchema> {
    all()
        .iter()
        .find(|s| s.fingerprint == fingerprint || s.apache_avro_fingerprint == fingerprint)
}

/// The newest version of the record called `full_name` (`de.consentrelay.events.ConsentGranted`).
pub fn by_full_name(full_name: &str) -> Option<&'static BundledSchema> {
    let simple = full_name.strip_prefix(NAMESPACE)?.strip_prefix('.')?;
    EventKind::from_name(simple).map(newest)
}

/// Every version of `kind`'s record, oldest first; never empty.
pub fn versions(kind: EventKind) -> impl Iterator<Item = &'static BundledSchema> {
    all().iter().filter(move |s| s.kind == kind)
}

/// The version writers use and readers resolve to.
pub fn newest(kind: EventKind) -> &'static BundledSchema {
    versions(kind)
        .last()
        .expect("every event kind has a bundled schema")
}

/// Every bundled version checked against its predecessor with Avro's schema-resolution rules
/// (DESIGN.md §2: each version reads the data of the previous one). One line per pair, `Err` when
/// a version cannot read its predecessor. For `consent-relay schemas check`.
pub fn evolution_report() -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    for kind in EventKind::ALL {
        let versions: Vec<&BundledSchema> = versions(kind).collect();
        for pair in versions.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            out.push(
                apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                    &old.schema,
                    &new.schema,
                )
                .map(|()| format!("{} reads {}", new.file_name, old.file_name))
                .map_err(|e| format!("{} cannot read {}: {e}", new.file_name, old.file_name)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_version_reads_its_predecessor() {
        let report = evolution_report();
        assert_eq!(report.len(), 4, "one pair (v1 → v2) per record today");
        assert!(report.iter().all(Result::is_ok), "{report:?}");
    }

    #[test]
    fn rabin_matches_the_avro_spec_test_data() {
        // From the Avro spec's fingerprint test data (share/test/data/schema-tests.txt).
        assert_eq!(crc64_avro(br#""null""#), 0x63dd_24e7_cc25_8f8a);
        assert_eq!(fingerprint_of_json(r#""null""#), Ok(0x63dd_24e7_cc25_8f8a));
        assert_eq!(
            fingerprint_of_json(r#"{"type": "int"}"#),
            Ok(0x7275_d51a_3f39_5c8f)
        );
        let null = Schema::parse_str(r#""null""#).unwrap();
        assert_eq!(apache_avro_fingerprint(&null), 0x63dd_24e7_cc25_8f8a);
        // apache-avro's raw bytes are that number little-endian: the single-object order.
        assert_eq!(
            null.fingerprint::<Rabin>().bytes,
            0x63dd_24e7_cc25_8f8a_u64.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn our_canonical_form_agrees_with_apache_avro_where_it_follows_the_spec() {
        let json = r#"{"type":"record","name":"R","namespace":"a.b","doc":"d","fields":[
            {"name":"x","type":["null",{"type":"array","items":"int"}],"default":null},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"f","type":{"type":"fixed","name":"c.F","size":4}},
            {"name":"g","type":"E"},
            {"name":"m","type":{"type":"map","values":"c.F"},"aliases":["mm"]}
        ]}"#;
        let ours = parsing_canonical_form(json).unwrap();
        assert_eq!(ours, Schema::parse_str(json).unwrap().canonical_form());
        assert_eq!(
            ours,
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"x","type":["null",{"type":"array","items":"int"}]},{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["A","B"]}},{"name":"f","type":{"name":"c.F","type":"fixed","size":4}},{"name":"g","type":"a.b.E"},{"name":"m","type":{"type":"map","values":"c.F"}}]}"#
        );
    }

    #[test]
    fn logical_types_reduce_to_their_primitive_like_java() {
        let v1 = versions(EventKind::ErasureRequested).next().unwrap();
        let pcf = parsing_canonical_form(v1.json).unwrap();
        assert_eq!(
            pcf,
            r#"{"name":"de.consentrelay.events.ErasureRequested","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"subject_id","type":"string"},{"name":"occurred_at","type":"long"},{"name":"source","type":"string"},{"name":"notice_version","type":["null","string"]},{"name":"contact","type":{"name":"de.consentrelay.events.Contact","type":"record","fields":[{"name":"email","type":["null","string"]},{"name":"phone","type":["null","string"]},{"name":"first_name","type":["null","string"]},{"name":"last_name","type":["null","string"]},{"name":"company","type":["null","string"]}]}}]}"#
        );
        // The apache-avro 0.21 deviation this module works around.
        let theirs = v1.schema.canonical_form();
        assert!(
            theirs.contains(r#"{"name":"event_id","type":{"type":"string"}}"#),
            "{theirs}"
        );
    }

    #[test]
    fn every_kind_has_a_parsed_schema_with_doc() {
        assert_eq!(all().len(), SOURCES.len());
        for kind in EventKind::ALL {
            let newest = newest(kind);
            assert_eq!(newest.kind, kind);
            assert_eq!(
                by_full_name(&newest.full_name()).map(|s| s.file_name),
                Some(newest.file_name)
            );
            for fp in [newest.fingerprint, newest.apache_avro_fingerprint] {
                assert_eq!(
                    by_fingerprint(fp).map(|s| s.file_name),
                    Some(newest.file_name)
                );
            }
            assert!(newest.file_name.starts_with(kind.name()));
            let json: Value = serde_json::from_str(newest.json).unwrap();
            assert!(
                json["doc"].as_str().is_some_and(|d| !d.is_empty()),
                "{}",
                newest.file_name
            );
            assert_eq!(json["namespace"], NAMESPACE);
        }
        // Older versions stay decodable by either fingerprint: their data may still be in Kafka.
        for s in all() {
            for fp in [s.fingerprint, s.apache_avro_fingerprint] {
                assert_eq!(by_fingerprint(fp).map(|b| b.file_name), Some(s.file_name));
            }
        }
        assert!(by_full_name("ConsentGranted").is_none());
        assert!(by_full_name("other.ns.ConsentGranted").is_none());
        assert!(by_fingerprint(0).is_none());
    }

    /// Published versions are immutable. A changed fingerprint means a published file (or a
    /// canonical form implementation) changed, and single-object data already in Kafka would stop
    /// decoding. The values (v1 and v2) were cross-checked with the Python `avro` 1.12.2 package: its canonical form
    /// as is (second column) and with `{"type":"string"}`/`{"type":"long"}` reduced (first).
    #[test]
    fn published_fingerprints_do_not_change() {
        let pinned: &[(&str, u64, u64)] = &[
            (
                "ConsentGranted.v1.avsc",
                0xbbd5_5b92_5d90_e336,
                0xbd0c_fc70_d55d_e7b7,
            ),
            (
                "ConsentWithdrawn.v1.avsc",
                0x277c_784e_d64c_707c,
                0xa0f0_6668_b40a_1022,
            ),
            (
                "Unsubscribed.v1.avsc",
                0xca43_902e_2f52_c9d8,
                0x5e7a_cc41_c8ea_7ebd,
            ),
            (
                "ErasureRequested.v1.avsc",
                0x2b30_953c_e23b_ded7,
                0x7c2d_9d80_29ae_99aa,
            ),
            (
                "ConsentGranted.v2.avsc",
                0x3b71_d5fc_36e2_f876,
                0x891a_3673_d93b_27a1,
            ),
            (
                "ConsentWithdrawn.v2.avsc",
                0xfc16_af57_6497_e5b1,
                0x401d_74d8_7a52_72c0,
            ),
            (
                "Unsubscribed.v2.avsc",
                0x4b12_3352_ec2e_52c5,
                0xaf30_178d_8a71_f6be,
            ),
            (
                "ErasureRequested.v2.avsc",
                0x307b_b048_ff6e_d1ff,
                0xd5ef_30e3_36d3_c7c6,
            ),
        ];
        assert_eq!(pinned.len(), all().len(), "pin every published version");
        for (file, spec, apache_avro) in pinned {
            let s = all().iter().find(|s| s.file_name == *file).unwrap();
            assert_eq!(s.fingerprint, *spec, "{file}: {:#018x}", s.fingerprint);
            assert_eq!(s.apache_avro_fingerprint, *apache_avro, "{file}");
        }
    }
}
