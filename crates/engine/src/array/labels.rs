//! `repair --labels` on an open array: the superblock copies of the members it holds (and
//! of its journal device) checked and, unless planning, the damaged ones rewritten. The
//! copies lie outside every area the array writes (`docs/format.md`), so this needs no
//! lock against I/O.

use super::Array;
use crate::error::{Error, Result};
use crate::member::Dev;
use crate::meta::{self, LabelRepair};

impl Array {
    /// Every present member's (and the journal device's) superblock copies, and with
    /// `dry_run` false the damaged, absent or older ones rewritten from the newest valid
    /// copy of the same device. Members repaired stop being reported with damaged front
    /// labels. `force`: as for [`meta::repair_labels`].
    pub fn repair_labels(&self, dry_run: bool, force: bool) -> Result<Vec<LabelRepair>> {
        if self.read_only && !dry_run {
            return Err(Error::Invalid(
                "the array is open read-only: superblock copies cannot be rewritten".into(),
            ));
        }
        let mut devs: Vec<Dev> = self.members().iter().flatten().cloned().collect();
        if let Some(j) = self.journal.as_ref().and_then(|j| j.device.clone()) {
            devs.push(j);
        }
        let out = meta::repair_labels(&devs, dry_run, force)?;
        if !dry_run {
            let fixed: Vec<usize> = out
                .iter()
                .filter_map(|r| r.member_index.map(|i| i as usize))
                .collect();
            self.front_labels_damaged
                .lock()
                .retain(|i| !fixed.contains(i));
        }
        Ok(out)
    }
}
