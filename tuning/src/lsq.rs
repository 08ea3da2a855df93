//! Least squares for a handful of unknowns: normal equations solved by Gaussian elimination
//! with partial pivoting, columns scaled to unit norm first (deliveries run to millions,
//! handshakes to thousands, and unscaled normal equations would lose the small ones).
//! Non-negativity by elimination: a coefficient that comes out negative is fixed at 0 and
//! the rest refitted, until none is negative (a cost cannot be negative).

/// Columns whose share outside the span of the others is below this are not identified.
pub const INDEPENDENCE_MIN: f64 = 0.05;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Solves `a · x = b` (n × n) in place; `None` when singular.
fn gauss(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for (k, row) in lower.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row.iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[col + 1 + k] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// Ordinary least squares of `y` on `cols`; `None` when the columns are dependent or one is
/// all zeros.
pub fn least_squares(cols: &[&[f64]], y: &[f64]) -> Option<Vec<f64>> {
    let scale: Vec<f64> = cols.iter().map(|c| norm(c)).collect();
    if scale.contains(&0.0) {
        return None;
    }
    let unit: Vec<Vec<f64>> = cols
        .iter()
        .zip(&scale)
        .map(|(c, s)| c.iter().map(|v| v / s).collect())
        .collect();
    let a: Vec<Vec<f64>> = unit
        .iter()
        .map(|ci| unit.iter().map(|cj| dot(ci, cj)).collect())
        .collect();
    let b: Vec<f64> = unit.iter().map(|c| dot(c, y)).collect();
    let x = gauss(a, b)?;
    Some(x.iter().zip(&scale).map(|(x, s)| x / s).collect())
}

/// The share (0…1) of `col` that lies outside the span of `basis`: 0 when it is a
/// combination of them, 1 when it is orthogonal to them.
pub fn independence(basis: &[&[f64]], col: &[f64]) -> f64 {
    let n = norm(col);
    if n == 0.0 {
        return 0.0;
    }
    if basis.is_empty() {
        return 1.0;
    }
    let Some(x) = least_squares(basis, col) else {
        return 0.0;
    };
    let residual: Vec<f64> = col
        .iter()
        .enumerate()
        .map(|(i, v)| v - basis.iter().zip(&x).map(|(b, c)| b[i] * c).sum::<f64>())
        .collect();
    norm(&residual) / n
}

/// Least squares with every coefficient ≥ 0: returns the coefficients and, for each, whether
/// it was forced to 0 because it came out negative.
pub fn non_negative(cols: &[&[f64]], y: &[f64]) -> Option<(Vec<f64>, Vec<bool>)> {
    let mut free: Vec<usize> = (0..cols.len()).collect();
    let mut forced = vec![false; cols.len()];
    loop {
        let sub: Vec<&[f64]> = free.iter().map(|&i| cols[i]).collect();
        let x = if sub.is_empty() {
            Vec::new()
        } else {
            least_squares(&sub, y)?
        };
        let worst = x
            .iter()
            .enumerate()
            .filter(|(_, v)| **v < 0.0)
            .min_by(|a, b| a.1.total_cmp(b.1));
        if let Some((k, _)) = worst {
            forced[free[k]] = true;
            free.remove(k);
            continue;
        }
        let mut all = vec![0.0; cols.len()];
        for (k, &i) in free.iter().enumerate() {
            all[i] = x[k];
        }
        return Some((all, forced));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = 3·a + 0.5·b + 1e-6·c exactly, with columns of very different scales.
    #[test]
    fn recovers_exact_coefficients() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [10.0, 0.0, 30.0, 5.0, 2.0];
        let c = [1e6, 3e6, 2e5, 7e6, 1e6];
        let y: Vec<f64> = (0..5)
            .map(|i| 3.0 * a[i] + 0.5 * b[i] + 1e-6 * c[i])
            .collect();
        let x = least_squares(&[&a, &b, &c], &y).unwrap();
        for (got, want) in x.iter().zip([3.0, 0.5, 1e-6]) {
            assert!((got - want).abs() <= 1e-9 * want, "{x:?}");
        }
    }

    #[test]
    fn dependent_columns_are_not_independent() {
        let a = [1.0, 2.0, 3.0];
        let b = [2.0, 4.0, 6.0];
        assert!(independence(&[&a], &b) < 1e-9);
        assert!(least_squares(&[&a, &b], &[1.0, 2.0, 3.0]).is_none());
        let c = [1.0, 0.0, 0.0];
        assert!(independence(&[&a], &c) > INDEPENDENCE_MIN);
    }

    /// y = 2·a − 1·b: the free fit gives b a negative coefficient, so it is forced to 0 and
    /// a refitted alone: a's coefficient is then Σ a·y / Σ a² = (2·1 + 4·2 + 6·3 … ).
    #[test]
    fn negative_coefficients_are_forced_to_zero() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [0.0, 1.0, 0.0, 1.0];
        let y: Vec<f64> = (0..4).map(|i| 2.0 * a[i] - b[i]).collect();
        let (x, forced) = non_negative(&[&a, &b], &y).unwrap();
        assert_eq!(forced, vec![false, true]);
        assert_eq!(x[1], 0.0);
        let want = dot(&a, &y) / dot(&a, &a);
        assert!((x[0] - want).abs() < 1e-12, "{x:?}");
    }
}
