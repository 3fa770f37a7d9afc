//! Which part of the vector each member of a group reduces: contiguous parts in proportion
//! to the members' shares (Hivemind's load balancing by bandwidth). Integer arithmetic
//! only, so every member computes the same parts on any machine.

use std::ops::Range;

/// Why a group's shares cannot split a vector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// No member.
    #[error("a group needs at least one member")]
    Empty,
    /// Every share is zero: nobody would reduce anything.
    #[error("every member's share is zero: at least one must reduce")]
    NoReducer,
    /// More members than a frame can name.
    #[error("{0} members: a group has at most {max}", max = u16::MAX)]
    TooMany(usize),
}

/// Splits `len` values into one contiguous range per member, sized in proportion to
/// `shares` (largest remainders first, ties to the lower index). A member with share 0
/// reduces nothing: its range is empty (Hivemind's client mode).
pub fn partition(len: usize, shares: &[u32]) -> Result<Vec<Range<usize>>, PartitionError> {
    if shares.is_empty() {
        return Err(PartitionError::Empty);
    }
    if shares.len() > u16::MAX as usize {
        return Err(PartitionError::TooMany(shares.len()));
    }
    let total: u128 = shares.iter().map(|&s| s as u128).sum();
    if total == 0 {
        return Err(PartitionError::NoReducer);
    }
    let exact: Vec<(usize, u128)> = shares
        .iter()
        .map(|&s| {
            let num = len as u128 * s as u128;
            ((num / total) as usize, num % total)
        })
        .collect();
    let mut sizes: Vec<usize> = exact.iter().map(|e| e.0).collect();
    let left = len - sizes.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..shares.len()).filter(|&i| shares[i] > 0).collect();
    order.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in order.iter().take(left) {
        sizes[i] += 1;
    }
    let mut at = 0;
    Ok(sizes
        .into_iter()
        .map(|s| {
            let r = at..at + s;
            at += s;
            r
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_vector_in_proportion_to_the_shares() {
        let p = partition(10, &[1, 1, 1]).unwrap();
        assert_eq!(p, vec![0..4, 4..7, 7..10]);
        let p = partition(1000, &[3, 1, 0, 4]).unwrap();
        assert_eq!(p, vec![0..375, 375..500, 500..500, 500..1000]);
        // Fewer values than members: some parts are empty, the vector is still covered.
        let p = partition(2, &[1, 1, 1]).unwrap();
        assert_eq!(p, vec![0..1, 1..2, 2..2]);
        for (len, shares) in [
            (0usize, vec![5u32]),
            (7, vec![u32::MAX, 1, u32::MAX]),
            (10_000_001, vec![1, 2, 3, 4, 5, 6, 7]),
        ] {
            let p = partition(len, &shares).unwrap();
            assert_eq!(p.len(), shares.len());
            assert_eq!(p.first().unwrap().start, 0);
            assert_eq!(p.last().unwrap().end, len);
            assert!(p.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn groups_that_cannot_split_are_refused() {
        assert_eq!(partition(5, &[]), Err(PartitionError::Empty));
        assert_eq!(partition(5, &[0, 0]), Err(PartitionError::NoReducer));
        assert_eq!(
            partition(5, &vec![1; 70_000]),
            Err(PartitionError::TooMany(70_000))
        );
    }
}
