import MSFormat
import MSKernels

/// The pre-norm MLP sublayer the decoders share: h += fc2(act(fc1(LN2(h)))).
struct FeedForward {
    let norm: (weight: Floats, bias: Floats)
    let fc1, fc2: Linear
    let dModel: Int, eps: Float, activation: Activation

    init(_ w: Weights, prefix p: String, config c: CommonConfig) throws {
        norm = try w.norm(p + "norm2", c.dModel)
        fc1 = try w.linear(p + "mlp.fc1", out: c.dFF, in: c.dModel)
        fc2 = try w.linear(p + "mlp.fc2", out: c.dModel, in: c.dFF)
        dModel = c.dModel; eps = c.normEps; activation = c.activation
    }

    /// On `rows` rows of h; `u` holds rows·D floats of scratch, `f` rows·F.
    func apply(_ h: UnsafeMutablePointer<Float>, rows: Int, u: UnsafeMutablePointer<Float>, f: UnsafeMutablePointer<Float>) {
        Kernels.layerNorm(h, rows: rows, dim: dModel, weight: norm.weight.p, bias: norm.bias.p, eps: eps, into: u)
        fc1.apply(u, rows: rows, into: f)
        switch activation {
        case .gelu: Kernels.gelu(f, count: rows * fc1.outFeatures)
        case .geluTanh: Kernels.geluTanh(f, count: rows * fc1.outFeatures)
        }
        fc2.apply(f, rows: rows, into: h, accumulate: true)
    }
}

/// The token embedding table [V, D]: row t is token t's vector.
struct Embedding {
    let table: Floats
    let dModel: Int

    init(_ w: Weights, config c: CommonConfig) throws {
        table = try w.tensor("embed.weight", [c.vocabSize, c.dModel])
        dModel = c.dModel
    }

    func callAsFunction(_ tokens: [Int], into h: UnsafeMutablePointer<Float>) {
        for (i, t) in tokens.enumerated() { (h + i * dModel).update(from: table.row(t, dModel), count: dModel) }
    }
}

/// The final norm and the output projection (the embedding itself when tied).
struct OutputHead {
    let norm: (weight: Floats, bias: Floats)
    let head: Linear
    let eps: Float

    init(_ w: Weights, config c: CommonConfig, embedding: Embedding) throws {
        norm = try w.norm("norm_f", c.dModel)
        head = try c.tieEmbeddings ? Linear(weight: embedding.table, bias: nil, in: c.dModel, out: c.vocabSize)
            : w.linear("lm_head", out: c.vocabSize, in: c.dModel, bias: false)
        eps = c.normEps
    }

    /// Logits of `rows` rows of h (which is left unchanged).
    func logits(_ h: UnsafePointer<Float>, rows: Int) -> [Float] {
        guard rows > 0 else { return [] }
        let D = head.inFeatures, V = head.outFeatures
        let u = Floats(count: rows * D, zeroed: false)
        Kernels.layerNorm(h, rows: rows, dim: D, weight: norm.weight.p, bias: norm.bias.p, eps: eps, into: u.p)
        return [Float](unsafeUninitializedCapacity: rows * V) { out, done in
            head.apply(u.p, rows: rows, into: out.baseAddress!)
            done = rows * V
        }
    }
}
