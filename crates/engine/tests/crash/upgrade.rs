//! The format-1 upgrade case: the write-mode assemble that rewrites the metadata as
//! format 2 (and the writes after it) cut at a random I/O.

use super::{check_data, Outcome, Vols, Work};
use crate::{assemble, Model};
use damocles_engine::powercut::Rng;
use damocles_engine::{Array, Dev};

/// The upgrade case's workload: the write-mode assemble (which upgrades the format-1
/// metadata), then writes to the one volume.
pub(super) fn workload(
    devs: Vec<Dev>,
    budget: u64,
    data: &[u8],
    rng: &mut Rng,
    alive: &dyn Fn() -> bool,
) -> Result<Outcome, String> {
    let mut model = Model::new(data.len());
    model.current.copy_from_slice(data);
    model.flushed();
    let mut out = Outcome::default();
    let a = match assemble(devs, budget) {
        Ok(a) => a,
        Err(e) if alive() => return Err(format!("assemble for the upgrade: {e}")),
        Err(_) => {
            out.vols.models.insert(0, model);
            return Ok(out);
        }
    };
    let v = a.volume_list().pop().ok_or("no volume after the upgrade")?;
    out.vols.table = vec![v.clone()];
    out.vols.models.insert(v.id, model);
    let mut w = Work {
        a: &a,
        rng,
        alive,
        vols: out.vols,
        names: 0,
        degraded: false,
    };
    let mut failed = false;
    for op in 0..12 {
        let r = if w.rng.chance(20) {
            w.flush()
        } else {
            w.write(op)
        };
        if let Err(m) = r {
            out.unexpected = m;
            failed = true;
            break;
        }
    }
    // Not after a failed request: a write that failed before it was buffered leaves
    // nothing to flush, and a flush that then succeeds does not make it durable.
    if !failed {
        let _ = w.flush();
    }
    out.vols = w.vols;
    Ok(out)
}

/// After the crash the upgraded (or not yet upgraded) array holds its one volume with its
/// data; `format`: the version it must show (0: either).
pub(super) fn check(a: &Array, out: &Outcome, format: u32) -> Result<(), String> {
    let st = a.status();
    let ok = match format {
        0 => matches!(st.format_version, 1 | 2),
        f => st.format_version == f,
    };
    if !ok {
        return Err(format!(
            "format version {} (expected {})",
            st.format_version,
            if format == 0 {
                "1 or 2".into()
            } else {
                format.to_string()
            }
        ));
    }
    let got = a.volume_list();
    let m = out.vols.models.values().next().expect("the volume's model");
    match &got[..] {
        [v] if v.name == "tank" && v.size as usize == m.current.len() => {}
        _ => return Err(format!("the volumes after the crash: {got:?}")),
    }
    let vols = Vols {
        table: got.clone(),
        models: [(got[0].id, m.clone())].into_iter().collect(),
    };
    check_data(a, &got, &vols).map_err(|e| format!("format {}: {e}", st.format_version))
}
