//! The volume requests of the control protocol (`damocles volume ...`), applied to an
//! open array: served (the server then adds or removes the volume's export) or assembled
//! from members given on the command line.

use super::proto::{Response, VolumeOp};
use crate::units;
use anyhow::{bail, Result};
use damocles_engine::{Array, Level, Template, VolumeSize, VolumeSpec, DEFAULT_STRIPE_UNIT};

/// Applies one volume request.
pub fn apply_volume(array: &Array, op: VolumeOp) -> Result<Response> {
    Ok(match op {
        VolumeOp::Create {
            name,
            level,
            copies,
            stripe_unit,
            size,
            thin,
            dry_run,
        } => {
            let level: Level = level.parse()?;
            let spec = VolumeSpec {
                name: name.clone(),
                template: Template {
                    level,
                    copies: copies.unwrap_or(level.default_copies()),
                    stripe_unit: stripe_unit.unwrap_or(DEFAULT_STRIPE_UNIT),
                },
                size: size.map_or(VolumeSize::Max, VolumeSize::Bytes),
                thin,
            };
            if dry_run {
                return Ok(Response {
                    volume: Some(array.plan_volume(&spec)?),
                    ..Response::ok()
                });
            }
            let f = array.create_volume(&spec)?;
            let msg = format!(
                "volume {name} created: {} at {level}{}",
                units::human(f.size),
                if thin { ", thin" } else { "" }
            );
            Response {
                volume: Some(f),
                ..Response::ok().with_message(msg)
            }
        }
        VolumeOp::List {} => Response {
            volumes: Some(array.volume_statuses()),
            ..Response::ok()
        },
        VolumeOp::Resize { name, size, force } => {
            let size = size.map_or(VolumeSize::Max, VolumeSize::Bytes);
            let (from, to) = array.resize_volume(&name, size, force)?;
            let msg = if from == to {
                format!("volume {name} stays {}", units::human(to))
            } else {
                format!(
                    "volume {name} resized from {} to {}; clients see it when they connect again",
                    units::human(from),
                    units::human(to)
                )
            };
            Response::ok().with_message(msg)
        }
        VolumeOp::Delete { name, force } => {
            if !force {
                bail!("deleting volume {name:?} destroys its data: add --force to do it");
            }
            array.delete_volume(&name)?;
            Response::ok().with_message(format!("volume {name} deleted"))
        }
        VolumeOp::Rename { old, new } => {
            array.rename_volume(&old, &new)?;
            Response::ok().with_message(format!("volume {old} renamed to {new}"))
        }
    })
}

/// [`apply_volume`] on a served array: the volume's export follows. A new volume is
/// exported at once on every server of the array; a volume is deleted or renamed only
/// once its export could be taken away (no client connected), and a failed change puts
/// the export back.
pub fn apply_served(
    array: &std::sync::Arc<Array>,
    op: VolumeOp,
    registries: &[damocles_nbd::Exports],
) -> Result<Response> {
    match op.clone() {
        VolumeOp::Create {
            dry_run: false,
            name,
            ..
        } => {
            let r = apply_volume(array, op)?;
            let v = array.volume_named(&name)?;
            for reg in registries {
                let e = crate::blockdev::volume_export(array, &v, None, array.is_read_only(), None);
                if let Err(e) = reg.add(e) {
                    tracing::warn!("volume {name} created but not exported: {e}");
                }
            }
            Ok(r)
        }
        VolumeOp::Delete { name, .. } | VolumeOp::Rename { old: name, .. } => {
            let v = array.volume_named(&name)?;
            let only = array.volume_list().len() == 1;
            let mut taken = Vec::new();
            for reg in registries {
                let export = export_of(reg, &v.name, only);
                let Some(export) = export else { continue };
                match reg.remove(&export, false) {
                    Ok(_) => taken.push((reg.clone(), export)),
                    Err(e) => {
                        put_back(array, &v, &taken);
                        bail!("volume {name} is in use: {e}; disconnect the client first");
                    }
                }
            }
            let renamed = match &op {
                VolumeOp::Rename { new, .. } => Some(new.clone()),
                _ => None,
            };
            match apply_volume(array, op) {
                Ok(r) => {
                    if let Some(new) = renamed {
                        let v = array.volume_named(&new)?;
                        let back: Vec<_> = taken
                            .into_iter()
                            .map(|(reg, old)| {
                                (
                                    reg,
                                    if old == name.as_str() {
                                        new.clone()
                                    } else {
                                        old
                                    },
                                )
                            })
                            .collect();
                        put_back(array, &v, &back);
                    }
                    Ok(r)
                }
                Err(e) => {
                    put_back(array, &v, &taken);
                    Err(e)
                }
            }
        }
        _ => apply_volume(array, op),
    }
}

/// The export of volume `name` in `reg`: by its name, or the registry's only export when
/// the array has one volume (`serve --export` may have renamed it).
fn export_of(reg: &damocles_nbd::Exports, name: &str, only: bool) -> Option<String> {
    if reg.contains(name) {
        return Some(name.to_string());
    }
    let list = reg.list();
    match list.as_slice() {
        [one] if only => Some(one.name.clone()),
        _ => None,
    }
}

fn put_back(
    array: &std::sync::Arc<Array>,
    v: &damocles_engine::Volume,
    taken: &[(damocles_nbd::Exports, String)],
) {
    for (reg, export) in taken {
        let e = crate::blockdev::volume_export(array, v, Some(export), array.is_read_only(), None);
        if let Err(e) = reg.add(e) {
            tracing::warn!("export {export} could not be put back: {e}");
        }
    }
}
