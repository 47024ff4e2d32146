//! Which datasets of an existing HDF5 file record bitshuffle or LZ4 filter values that
//! readers misdecode (`detingestd check`): every dataset reached by hard links from the root,
//! with its filters judged by [`judge_filter_values`].

use std::path::Path;

use hdf5::filters::Filter;
use hdf5::{Dataset, File, Group, LinkType};

use crate::filter::{judge_filter_values, FilterVerdict};
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
    for (name, kind) in hard_members(group)? {
        let path = format!("{at}/{name}");
        match kind {
            hdf5::LocationType::Group => visit(&group.group(&name)?, &path, found)?,
            hdf5::LocationType::Dataset => judge(&group.dataset(&name)?, &path, found)?,
            _ => {}
        }
    }
    Ok(())
}

/// The group's members reached by hard links, with their kind.
pub(crate) fn hard_members(group: &Group) -> Result<Vec<(String, hdf5::LocationType)>, WriteError> {
    let mut names = Vec::new();
    group.iter_visit_default(|name, info| {
        if info.link_type == LinkType::Hard {
            names.push(name.to_owned());
        }
        Ok(())
    })?;
    names
        .into_iter()
        .map(|name| Ok((name.clone(), group.loc_type_by_name(&name)?)))
        .collect()
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
    for filter in data.dcpl()?.get_filters()? {
        let (filter, values) = match filter {
            Filter::User(id, values) => (id as u32, values),
            other => (other.id() as u32, Vec::new()),
        };
        found.push(DatasetFilterCheck {
            dataset: path.to_owned(),
            verdict: judge_filter_values(filter, &values, es),
            filter,
            values,
        });
    }
    Ok(())
}
