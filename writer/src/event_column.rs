//! One growing 1-D dataset of an event file (`event_id`, `event_time_offset`,
//! `event_time_zero`, a log's `time`...). Values are staged in a buffer of one chunk and
//! written a whole chunk at a time by direct chunk write, encoded with the file's codec (the
//! dataset records the codec's HDF5 filter, so readers decode with the usual plugin). A flush
//! writes the chunk being filled as it is, its unfilled tail zeros and outside the dataset's
//! extent, so an SWMR reader sees every value up to the flush; that chunk is written again
//! once it fills. Nothing is allocated after creation.

use hdf5::{Dataset, Group, H5Type};
use hdf5_sys::h5::hsize_t;

use crate::data_file::write_stored_chunk;
use crate::filter::Hdf5Filter;
use crate::{Codec, WriteError};

/// A growing 1-D dataset written by whole encoded chunks.
pub(crate) struct Column {
    ds: Dataset,
    codec: Codec,
    /// Bytes per value.
    es: usize,
    /// Values per chunk.
    chunk_len: usize,
    /// The chunk being filled (`chunk_len * es` bytes; zeros past `staged`).
    stage: Vec<u8>,
    /// Values in `stage`.
    staged: usize,
    /// Values in whole chunks already written.
    done: u64,
    /// The encoded chunk.
    encoded: Vec<u8>,
    /// `stage` holds values not yet written to the file.
    dirty: bool,
    /// The dataset's extent as last set.
    extent: u64,
}

impl Column {
    /// Creates the dataset `name` in `group`: `[0..]` values of `T`, chunks of `chunk_len`,
    /// `codec`'s filter recorded and checked.
    pub(crate) fn create<T: H5Type>(
        group: &Group,
        name: &str,
        codec: Codec,
        chunk_len: usize,
    ) -> Result<Self, WriteError> {
        let es = std::mem::size_of::<T>();
        let filter = Hdf5Filter::of(codec, es);
        let mut dcpl = hdf5::plist::DatasetCreate::build();
        dcpl.chunk(chunk_len);
        if let Some(f) = &filter {
            dcpl.add_filter(f.id as _, &f.values_to_pass());
        }
        let ds = group
            .new_dataset::<T>()
            .set_dcpl(&dcpl.finish()?)
            .chunk(chunk_len)
            .shape(0..)
            .create(name)?;
        if let Some(f) = filter {
            f.verify(&ds, &format!("{}/{name}", group.name()))?;
        }
        Ok(Self {
            ds,
            codec,
            es,
            chunk_len,
            stage: vec![0; chunk_len * es],
            staged: 0,
            done: 0,
            encoded: vec![0; codec.max_compressed_len(chunk_len * es, es)],
            dirty: false,
            extent: 0,
        })
    }

    /// The dataset, for its attributes.
    pub(crate) fn dataset(&self) -> &Dataset {
        &self.ds
    }

    /// Values appended so far (written or staged).
    pub(crate) fn len(&self) -> u64 {
        self.done + self.staged as u64
    }

    /// Appends values given as their little-endian bytes (a whole number of values).
    pub(crate) fn push_bytes(&mut self, mut bytes: &[u8]) -> Result<(), WriteError> {
        debug_assert_eq!(bytes.len() % self.es, 0);
        while !bytes.is_empty() {
            let at = self.staged * self.es;
            let n = bytes.len().min(self.stage.len() - at);
            self.stage[at..at + n].copy_from_slice(&bytes[..n]);
            self.staged += n / self.es;
            self.dirty = true;
            bytes = &bytes[n..];
            if self.staged == self.chunk_len {
                self.write_stage()?;
                self.done += self.chunk_len as u64;
                self.staged = 0;
                self.stage.fill(0);
                self.dirty = false;
            }
        }
        Ok(())
    }

    /// Appends `n` copies of the 4-byte value `v` (little-endian), for a column of 4-byte
    /// values.
    pub(crate) fn push_repeated(&mut self, v: [u8; 4], n: usize) -> Result<(), WriteError> {
        debug_assert_eq!(self.es, 4);
        let mut block = [0u8; 4096];
        for c in block.chunks_exact_mut(4) {
            c.copy_from_slice(&v);
        }
        let mut left = n * 4;
        while left > 0 {
            let k = left.min(block.len());
            self.push_bytes(&block[..k])?;
            left -= k;
        }
        Ok(())
    }

    /// Makes every value appended so far part of the file: the chunk being filled is written
    /// as it is and the extent set.
    pub(crate) fn flush(&mut self) -> Result<(), WriteError> {
        if self.dirty {
            self.write_stage()?;
            self.dirty = false;
        }
        self.set_extent(self.len())
    }

    fn set_extent(&mut self, n: u64) -> Result<(), WriteError> {
        if n != self.extent {
            self.ds.resize(n as usize)?;
            self.extent = n;
        }
        Ok(())
    }

    /// Encodes the stage (its whole chunk) and writes it at its place.
    fn write_stage(&mut self) -> Result<(), WriteError> {
        // The chunk must lie inside the extent when it is written.
        self.set_extent(self.done.max(self.extent).max(self.done + 1))?;
        let n = self
            .codec
            .compress_into(&self.stage, self.es, &mut self.encoded)
            .map_err(|e| WriteError::Metadata(format!("encoding an event chunk: {e}")))?;
        let offset = [self.done as hsize_t];
        if !write_stored_chunk(&self.ds, &offset, 0, &self.encoded[..n]) {
            return Err(WriteError::Metadata(format!(
                "writing a chunk of {} at {}",
                self.ds.name(),
                self.done
            )));
        }
        Ok(())
    }
}
