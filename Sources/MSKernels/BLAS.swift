import CBLAS

/// The numeric kernels of msgen. Everything that calls BLAS lives here, so that the
/// models read as math and the one place to tune is small.
public enum Kernels {
    /// y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]) — a PyTorch Linear on m rows at once.
    public static func linear(
        _ x: UnsafePointer<Float>, rows m: Int, in k: Int,
        weight w: UnsafePointer<Float>, out n: Int, bias: UnsafePointer<Float>?,
        into y: UnsafeMutablePointer<Float>
    ) {
        if let bias {
            for r in 0..<m { (y + r * n).update(from: bias, count: n) }
        }
        if m == 1 {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(k), 1, w, Int32(k), x, 1, bias == nil ? 0 : 1, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                        1, x, Int32(k), w, Int32(k), bias == nil ? 0 : 1, y, Int32(n))
        }
    }

    /// The number of threads OpenBLAS uses.
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}
