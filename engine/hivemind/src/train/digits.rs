//! The handwritten digits (`data/digits.bin`, see `data/README.md`): 8×8 images of 0..16,
//! labels 0..9, parsed and checked, split by a fixed rule.

/// Pixels per image.
pub const PIXELS: usize = 64;
/// Classes.
pub const CLASSES: usize = 10;

/// Images and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `len() × PIXELS` pixels scaled to [0, 1].
    pub pixels: Vec<f32>,
    /// Labels 0..9.
    pub labels: Vec<u8>,
}

/// Why bytes are not digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigitsError {
    /// Not whole rows.
    #[error("{0} bytes are not whole rows of 65")]
    Length(usize),
    /// A value out of range.
    #[error("row {row}: {what} out of range")]
    Range {
        /// The row.
        row: usize,
        /// Pixel or label.
        what: &'static str,
    },
}

impl Digits {
    /// Parses rows of 64 pixels (0..16) and a label (0..9).
    pub fn parse(bytes: &[u8]) -> Result<Self, DigitsError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(PIXELS + 1) {
            return Err(DigitsError::Length(bytes.len()));
        }
        let mut d = Digits {
            pixels: Vec::with_capacity(bytes.len()),
            labels: Vec::with_capacity(bytes.len() / (PIXELS + 1)),
        };
        for (row, r) in bytes.chunks_exact(PIXELS + 1).enumerate() {
            if r[..PIXELS].iter().any(|&p| p > 16) {
                return Err(DigitsError::Range { row, what: "pixel" });
            }
            if r[PIXELS] as usize >= CLASSES {
                return Err(DigitsError::Range { row, what: "label" });
            }
            d.pixels
                .extend(r[..PIXELS].iter().map(|&p| p as f32 / 16.0));
            d.labels.push(r[PIXELS]);
        }
        Ok(d)
    }

    /// Images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images whose index `i` satisfies `keep(i)`.
    pub fn select(&self, keep: impl Fn(usize) -> bool) -> Digits {
        let mut d = Digits {
            pixels: Vec::new(),
            labels: Vec::new(),
        };
        for i in (0..self.len()).filter(|&i| keep(i)) {
            d.pixels
                .extend_from_slice(&self.pixels[i * PIXELS..(i + 1) * PIXELS]);
            d.labels.push(self.labels[i]);
        }
        d
    }

    /// Every fifth image held out for testing (20 %), the rest for training.
    pub fn split(&self) -> (Digits, Digits) {
        (self.select(|i| i % 5 != 4), self.select(|i| i % 5 == 4))
    }

    /// Member `k` of `n`'s share of the images (every `n`-th, from `k`).
    pub fn shard(&self, k: usize, n: usize) -> Digits {
        self.select(|i| i % n.max(1) == k)
    }
}
