//! Which datasets of an existing HDF5 file record bitshuffle or LZ4 filter values that
//! readers misdecode (`detingestd check`): every dataset reached by hard links from the root,
//! with its filters judged by [`judge_filter_values`].

use std::path::Path;

use hdf5::{Dataset, File, Group, LinkType};

use crate::filter::{judge_filter_values, recorded_filters, FilterVerdict};
use crate::WriteError;

/// One filter of one dataset, as recorded, and what it means to readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetFilterCheck {
    /// Absolute path of the dataset in the file.
    pub dataset: String,
    /// Filter id.
    pub filter: u32,
    /// The recorded `cd_values`.
    pub values: Vec<u32>,
    /// Whether readers decode the chunks with them.
    pub verdict: FilterVerdict,
}

/// Judges every filter of every dataset of the file at `path`: one entry per filter of a
/// filtered dataset, in the file's link order. Soft and external links are not followed
/// (a master file's links lead to data files, which are checked on their own).
pub fn check_filters(path: &Path) -> Result<Vec<DatasetFilterCheck>, WriteError> {
    let file = File::open(path)?;
    let mut found = Vec::new();
    visit(&file, "", &mut found)?;
    Ok(found)
}

fn visit(group: &Group, at: &str, found: &mut Vec<DatasetFilterCheck>) -> Result<(), WriteError> {
    for (name, _) in links(group)?
        .into_iter()
        .filter(|(_, l)| *l == LinkType::Hard)
    {
        let path = format!("{at}/{name}");
        match group.loc_type_by_name(&name)? {
            hdf5::LocationType::Group => visit(&group.group(&name)?, &path, found)?,
            hdf5::LocationType::Dataset => judge(&group.dataset(&name)?, &path, found)?,
            _ => {}
        }
    }
    Ok(())
}

/// The group's links, with their kind (hard, soft, external).
pub(crate) fn links(group: &Group) -> Result<Vec<(String, LinkType)>, WriteError> {
    let mut links = Vec::new();
    group.iter_visit_default(|name, info| {
        links.push((name.to_owned(), info.link_type));
        Ok(())
    })?;
    Ok(links)
}

fn judge(
    data: &Dataset,
    path: &str,
    found: &mut Vec<DatasetFilterCheck>,
) -> Result<(), WriteError> {
    if !data.is_chunked() {
        return Ok(());
    }
    let es = data.dtype()?.size();
    for (filter, values) in recorded_filters(data)? {
        found.push(DatasetFilterCheck {
            dataset: path.to_owned(),
            verdict: judge_filter_values(filter, &values, es),
            filter,
            values,
        });
    }
    Ok(())
}
