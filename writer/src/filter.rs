//! The HDF5 filter recorded with an encoded dataset, stored right whether or not the
//! filter's plugin is loadable by the writing process.
//!
//! Chunks arrive encoded, so HDF5 never runs the filter; it only records the filter id and
//! its `cd_values` for readers. But when HDF5 can load the filter's plugin (through
//! `HDF5_PLUGIN_PATH` or its default plugin directory) it calls the plugin's `set_local` at
//! dataset creation, and bitshuffle's (every build: hdf5plugin's, Debian's, a self-built
//! one) puts `[major, minor, element size]` before the values it was given. Given all five
//! values, the file then records eight, which readers misread (a crash in h5py +
//! hdf5plugin). So [`Hdf5Filter::values_to_pass`] asks HDF5 whether the plugin is there and
//! passes only the user part when it is, and [`Hdf5Filter::verify`] reads the stored values
//! back after creating the dataset: a mismatch is an error, never a file with wrong values.

use hdf5::filters::Filter;
use hdf5::Dataset;

use crate::codec::{bslz4, lz4};
use crate::{Codec, WriteError};

/// The filter of a codec for `es`-byte pixels, with the values readers need stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hdf5Filter {
    /// Registered filter id.
    pub id: u32,
    /// The `cd_values` the dataset must record.
    pub stored: Vec<u32>,
}

impl Hdf5Filter {
    /// The filter of `codec` for `es`-byte pixels, or `None` for an unfiltered dataset.
    pub fn of(codec: Codec, es: usize) -> Option<Self> {
        let (id, stored) = codec.hdf5_filter(es)?;
        Some(Self { id, stored })
    }

    /// The values to give `H5Pset_filter` so that [`Self::stored`] ends up in the file:
    /// all of them when the plugin is not loadable, and bitshuffle's user part (block size,
    /// compression) when it is, because its `set_local` then adds the first three.
    pub fn values_to_pass(&self) -> Vec<u32> {
        if self.id == bslz4::FILTER_ID && Filter::get_info(self.id as _).is_available {
            self.stored[3..].to_vec()
        } else {
            self.stored.clone()
        }
    }

    /// Reads the values `dataset` (named `name` in errors) recorded and checks them: an
    /// error naming the dataset and both sets of values if they are not right.
    pub fn verify(&self, dataset: &Dataset, name: &str) -> Result<(), WriteError> {
        let found = recorded_filters(dataset)?;
        let stored = match found.as_slice() {
            [(id, values)] if *id == self.id => values.clone(),
            _ => {
                return Err(WriteError::FilterValues {
                    dataset: name.to_owned(),
                    found: format!("{found:?}"),
                    expected: format!("[({}, {:?})]", self.id, self.stored),
                })
            }
        };
        if self.accepts(&stored) {
            Ok(())
        } else {
            Err(WriteError::FilterValues {
                dataset: name.to_owned(),
                found: format!("{stored:?}"),
                expected: format!("{:?}", self.stored),
            })
        }
    }

    /// Whether `stored` is what this filter must record. Bitshuffle's first two values are
    /// the version of whichever build ran `set_local` and are informational; the element
    /// size, block size and compression must be ours exactly.
    fn accepts(&self, stored: &[u32]) -> bool {
        if self.id == bslz4::FILTER_ID {
            stored.len() == self.stored.len() && stored[2..] == self.stored[2..]
        } else {
            stored == self.stored
        }
    }
}

/// The filters `dataset` records, in pipeline order, with their values (empty for HDF5's
/// built-in filters, whose values are not ours to judge).
pub(crate) fn recorded_filters(dataset: &Dataset) -> Result<Vec<(u32, Vec<u32>)>, WriteError> {
    Ok(dataset
        .dcpl()?
        .get_filters()?
        .into_iter()
        .map(|f| match f {
            Filter::User(id, values) => (id as u32, values),
            other => (other.id() as u32, Vec::new()),
        })
        .collect())
}

/// What a file's recorded filter values mean to a reader.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterVerdict {
    /// Readers decode the chunks with these values.
    Right,
    /// Bitshuffle values with a plugin's `[major, minor, element size]` put before a full
    /// set of five (the fault of detingest before the read-back check): readers misdecode
    /// them; `fixed` is what the file should record, and the chunks are intact.
    Prepended {
        /// The values without the three extra ones.
        fixed: Vec<u32>,
    },
    /// Values no reader can decode the chunks with, and no known cause explains.
    Wrong,
}

/// Judges the values recorded for filter `id` on a dataset of `es`-byte elements. Filters
/// other than bitshuffle (32008) and LZ4 (32004) are not ours to judge and count as right.
pub fn judge_filter_values(id: u32, values: &[u32], es: usize) -> FilterVerdict {
    match id {
        bslz4::FILTER_ID if bitshuffle_values_right(values, es) => FilterVerdict::Right,
        bslz4::FILTER_ID if values.len() >= 8 && bitshuffle_values_right(&values[3..], es) => {
            FilterVerdict::Prepended {
                fixed: values[3..].to_vec(),
            }
        }
        bslz4::FILTER_ID => FilterVerdict::Wrong,
        lz4::FILTER_ID if values.len() <= 2 => FilterVerdict::Right,
        lz4::FILTER_ID => FilterVerdict::Wrong,
        _ => FilterVerdict::Right,
    }
}

/// The layout bitshuffle's decoder reads: `[major, minor, element size, block size,
/// compression (0 none, 2 LZ4, 3 Zstd), zstd level]`, the block a multiple of 8.
fn bitshuffle_values_right(values: &[u32], es: usize) -> bool {
    matches!(values.len(), 5 | 6)
        && values[2] as usize == es
        && values[3] % 8 == 0
        && matches!(values[4], 0 | 2 | 3)
        && (values.len() == 5 || values[4] == 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_a_plugin_prepended_in_issue_13_are_found_and_fixed() {
        use FilterVerdict::{Right, Wrong};
        let prepended = FilterVerdict::Prepended {
            fixed: vec![0, 5, 2, 0, 2],
        };
        let cases: [(u32, &[u32], usize, FilterVerdict); 8] = [
            (32008, &[0, 4, 2, 0, 5, 2, 0, 2], 2, prepended),
            (32008, &[0, 5, 2, 0, 2], 2, Right),
            (32008, &[0, 4, 4, 0, 2], 4, Right),
            (32008, &[0, 5, 2, 0, 2], 4, Wrong), // another element size
            (32008, &[0, 5, 2, 0, 5], 2, Wrong), // unknown compression
            (32008, &[0, 2], 2, Wrong),          // set_local's input, never run
            (32004, &[0], 2, Right),
            (1, &[6], 2, Right), // deflate: not ours to judge
        ];
        for (id, values, es, verdict) in cases {
            assert_eq!(
                judge_filter_values(id, values, es),
                verdict,
                "{id} {values:?}"
            );
        }
    }

    #[test]
    fn a_dataset_recording_other_values_is_an_error_naming_it_and_both_values() {
        let file = hdf5::File::with_options()
            .with_fapl(|p| p.core_filebacked(false))
            .create("detingest-filter-verify-test")
            .unwrap();
        let mut dcpl = hdf5::plist::DatasetCreate::build();
        // Element size 4 on a 2-byte dataset: wrong with or without a plugin's set_local.
        dcpl.chunk((1, 4, 4)).add_filter(32008, &[0, 5, 4, 0, 2]);
        let data = file
            .new_dataset::<u16>()
            .set_dcpl(&dcpl.finish().unwrap())
            .chunk((1, 4, 4))
            .shape((0.., 4, 4))
            .create("data")
            .unwrap();
        let filter = Hdf5Filter::of(Codec::BitshuffleLz4, 2).unwrap();
        let err = filter.verify(&data, "x.h5:/data").unwrap_err().to_string();
        assert!(
            err.starts_with("x.h5:/data records filter values ["),
            "{err}"
        );
        assert!(err.contains("not [0, 5, 2, 0, 2]"), "{err}");
        let lz4 = Hdf5Filter::of(Codec::Lz4, 2).unwrap();
        assert!(lz4.verify(&data, "x.h5:/data").is_err(), "another filter");
    }

    #[test]
    fn the_plugins_version_is_accepted_but_nothing_else_may_differ() {
        let f = Hdf5Filter::of(Codec::BitshuffleLz4, 2).unwrap();
        assert_eq!(f.stored, vec![0, 5, 2, 0, 2]);
        assert!(f.accepts(&[0, 5, 2, 0, 2]));
        assert!(f.accepts(&[0, 3, 2, 0, 2]), "Debian's bitshuffle 0.3.5");
        assert!(!f.accepts(&[0, 4, 2, 0, 5, 2, 0, 2]));
        assert!(!f.accepts(&[0, 5, 2, 8, 2]));
        let lz4 = Hdf5Filter::of(Codec::Lz4, 2).unwrap();
        assert!(lz4.accepts(&[0]) && !lz4.accepts(&[0, 0]));
        assert!(Hdf5Filter::of(Codec::None, 2).is_none());
    }
}
