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
