import Foundation
import MSFormat
import Testing

@testable import MSModels

struct MSTransEncoderTests {
    static let fixtures = Golden.names(prefix: "mstrans_")

    @Test func fixturesExist() { #expect(Self.fixtures == ["mstrans_fixed_scales", "mstrans_nk_scales"]) }

    /// Logits and probabilities equal the PyTorch reference's.
    @Test(arguments: fixtures)
    func matchesReference(_ name: String) throws {
        let g = try Golden(name)
        let model = try MSTransEncoder(config: (try g.msTrans), tensors: g.tensors)
        let r = try model.classify(g.ids)
        #expect(!r.truncated && r.tokens == g.ids.count)
        #expect(r.logits.count == (try g.msTrans).labels.count)
        #expect(maxError(r.logits[...], g.logits[...]) < 1e-4, "logits \(r.logits) vs \(g.logits)")
        #expect(maxError(r.probs[...], g.probs[...]) < 1e-4, "probs \(r.probs) vs \(g.probs)")
    }

    /// "N/k" is the length with [CLS] divided by k, rounded down to an odd number ≥ 1.
    @Test func fractionalScalesResolve() throws {
        let cases: [(k: Int, n: Int, width: Int)] = [
            (8, 29, 3), (4, 29, 7), (2, 29, 13),  // the nk fixture's length (its README)
            (2, 2, 1), (4, 2, 1), (8, 7, 1),  // shorter than k: at least 1
            (1, 2, 1), (1, 3, 3), (1, 10, 9),  // N/1: the whole sequence, odd
            (2, 16, 7), (2, 17, 7), (2, 18, 9), (3, 21, 7), (4, 48, 11), (4, 52, 13),
        ]
        for c in cases {
            #expect(HeadScale.fraction(c.k).width(sequenceLength: c.n) == c.width, "N/\(c.k) at n = \(c.n)")
        }
        for n in [2, 17, 64] { #expect(HeadScale.window(5).width(sequenceLength: n) == 5) }
        // Per head of the nk fixture, at its own length and at the longest one.
        let g = try Golden("mstrans_nk_scales")
        let model = try MSTransEncoder(config: (try g.msTrans), tensors: g.tensors)
        #expect(g.ids.count + 1 == 29)
        #expect(model.windows(sequenceLength: 29) == [[1, 1, 3, 3, 7], [1, 3, 3, 7, 13], [1, 3, 3, 7, 13]])
        #expect(model.windows(sequenceLength: 64) == [[1, 1, 3, 7, 15], [1, 3, 7, 15, 31], [1, 3, 7, 15, 31]])
    }

    /// With every window 1, each token attends only to itself: attention returns v_i, so
    /// the model equals H ← LN(H + ReLU((H·Wvᵀ + bv)·Woᵀ + bo)) computed directly, and
    /// Wq, Wk do not matter at all.
    @Test func windowOneAttendsOnlyToItself() throws {
        let w = Synthetic(layers: 2, dModel: 12, heads: 3, dFF: 10, labels: 4, vocab: 20, maxLength: 16, seed: 7)
        let config = try w.config(scales: [[1, 1, 1], [1, 1, 1]])
        let model = try MSTransEncoder(config: config, tensors: w.tensors)
        let text = [19, 3, 5, 3, 11, 0, 7, 2]
        let tokens = [config.clsTokenId] + text
        let direct = w.directWindowOne(text)
        let got = model.encode(tokens).array
        #expect(maxError(got[...], direct.hidden[...]) < 1e-5)
        #expect(maxError(model.forward(tokens)[...], direct.logits[...]) < 1e-5)

        var scrambled = w
        scrambled.randomize(["q_proj", "k_proj"], seed: 99)
        let other = try MSTransEncoder(config: config, tensors: scrambled.tensors)
        #expect(maxError(other.encode(tokens).array[...], got[...]) < 1e-6)
        // …whereas a window of 3 does see its neighbours through them.
        let wide = try w.config(scales: [[1, 1, 3], [1, 1, 1]])
        let a = try MSTransEncoder(config: wide, tensors: w.tensors).encode(tokens).array
        let b = try MSTransEncoder(config: wide, tensors: scrambled.tensors).encode(tokens).array
        #expect(maxError(a[...], b[...]) > 1e-3)
    }

    /// "N/k" is resolved from the length *with* [CLS], per input: compared with a direct
    /// computation at every text length up to max_length − 1, at lengths where using the
    /// length without [CLS] would give other windows.
    @Test func fractionalWindowsUseTheLengthWithCLS() throws {
        let w = Synthetic(layers: 2, dModel: 8, heads: 4, dFF: 6, labels: 3, vocab: 30, maxLength: 20, seed: 3)
        let scales: [[HeadScale]] = [[.window(1), .fraction(1), .fraction(2), .fraction(3)], [.window(3), .fraction(2), .fraction(4), .window(5)]]
        let config = try w.config(scales: scales)
        #expect(config.layerScales == scales)
        let model = try MSTransEncoder(config: config, tensors: w.tensors)
        var discriminating = 0
        for count in 1...19 {
            let text = (0..<count).map { ($0 * 7 + 3) % 29 }
            let got = try model.classify(text).logits
            let right = w.direct(text) { l, h, n in scales[l][h].width(sequenceLength: n) }.logits
            #expect(maxError(got[...], right[...]) < 1e-4, "\(count) tokens")
            let wrong = w.direct(text) { l, h, n in scales[l][h].width(sequenceLength: n - 1) }.logits
            if maxError(wrong[...], right[...]) > 1e-3 {
                discriminating += 1
                #expect(maxError(got[...], wrong[...]) > 1e-3)
            }
        }
        #expect(discriminating >= 10)
    }

    /// Token i is influenced only by tokens within its heads' windows: after two layers
    /// whose widest window is 9 (half 4) and 5 (half 2), by |i − j| ≤ 6.
    @Test func attentionStaysInTheBand() throws {
        let g = try Golden("mstrans_fixed_scales")
        let model = try MSTransEncoder(config: (try g.msTrans), tensors: g.tensors)
        let tokens = [(try g.msTrans).clsTokenId] + g.ids
        var changed = tokens
        let at = 15
        changed[at] = (changed[at] + 1) % g.config.vocabSize
        let D = g.config.dModel
        let a = model.encode(tokens).array, b = model.encode(changed).array
        for i in tokens.indices {
            let d = maxError(a[(i * D)..<((i + 1) * D)], b[(i * D)..<((i + 1) * D)])
            if abs(i - at) > 6 { #expect(d < 1e-6, "row \(i) changed by \(d)") }
            if i == at { #expect(d > 1e-3) }
        }
    }

    /// Text longer than max_length − 1 tokens is cut to its first max_length − 1.
    @Test func truncatesAtMaxLength() throws {
        let g = try Golden("mstrans_fixed_scales")
        let model = try MSTransEncoder(config: (try g.msTrans), tensors: g.tensors)
        let keep = (try g.msTrans).maxLength - 1
        #expect(keep == 47)
        let long = Array((0..<3).flatMap { _ in g.ids }.prefix(60))
        let r = try model.classify(long)
        #expect(r.truncated && r.tokens == keep)
        let exact = try model.classify(Array(long.prefix(keep)))
        #expect(!exact.truncated && exact.tokens == keep)
        #expect(r.logits == exact.logits)
        #expect(try model.classify(Array(long.prefix(keep + 1))).truncated)
        // One token is enough; none is an error; ids must be in the vocabulary.
        #expect(try model.classify([5]).tokens == 1)
        #expect { _ = try model.classify([]) } throws: { "\($0)".contains("empty") }
        #expect { _ = try model.classify([g.config.vocabSize]) } throws: { "\($0)".contains("out of range") }
    }

    @Test func rejectsWrongTensors() throws {
        let g = try Golden("mstrans_fixed_scales")
        var t = g.tensors
        t["layers.1.norm.bias"] = nil
        #expect { _ = try MSTransEncoder(config: (try g.msTrans), tensors: t) } throws: { "\($0)".contains("missing layers.1.norm.bias") }
        var twice = (try g.msTrans)
        twice.labels = ["a", "b", "a"]
        #expect { _ = try MSTransEncoder(config: twice, tensors: g.tensors) } throws: { "\($0)".contains("label twice") }
        let d = try Golden("cst_a1_shared_tied_gelu")
        #expect { _ = try Architectures.classifier(config: d.json, tensors: d.tensors) } throws: { "\($0)".contains("ms-trans-encoder") }
    }
}

/// A small encoder with seeded random weights, and a direct, loop-by-loop computation of
/// it for the case where every window is 1.
struct Synthetic {
    let layers, dModel, heads, dFF, labels, vocab, maxLength: Int
    var weights: [String: (shape: [Int], values: [Float])] = [:]

    init(layers: Int, dModel: Int, heads: Int, dFF: Int, labels: Int, vocab: Int, maxLength: Int, seed: UInt64) {
        (self.layers, self.dModel, self.heads, self.dFF, self.labels, self.vocab, self.maxLength) =
            (layers, dModel, heads, dFF, labels, vocab, maxLength)
        let D = dModel
        var shapes: [String: [Int]] = [
            "embed.weight": [vocab, D],
            "classifier.fc1.weight": [dFF, 2 * D], "classifier.fc1.bias": [dFF],
            "classifier.fc2.weight": [labels, dFF], "classifier.fc2.bias": [labels],
        ]
        for i in 0..<layers {
            for x in ["q", "k", "v", "o"] { shapes["layers.\(i).attn.\(x)_proj.weight"] = [D, D]; shapes["layers.\(i).attn.\(x)_proj.bias"] = [D] }
            shapes["layers.\(i).norm.weight"] = [D]; shapes["layers.\(i).norm.bias"] = [D]
        }
        for (name, shape) in shapes { weights[name] = (shape, []) }
        randomize([""], seed: seed)
    }

    /// New random values for every tensor whose name contains one of `parts`.
    mutating func randomize(_ parts: [String], seed: UInt64) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func uniform() -> Float {  // xorshift64*, in [−1, 1)
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            return Float((state &* 0x2545_F491_4F6C_DD1D) >> 40) / Float(1 << 23) - 1
        }
        for name in weights.keys.sorted() where parts.contains(where: { $0.isEmpty || name.contains($0) }) {
            let shape = weights[name]!.shape
            let isGain = name.contains("norm.weight")
            weights[name]!.values = (0..<shape.reduce(1, *)).map { _ in isGain ? 1 + 0.3 * uniform() : 0.6 * uniform() }
        }
    }

    var tensors: [String: Tensor] { weights.mapValues { Tensor(shape: $0.shape, floats: $0.values) } }

    func config(scales: [[Int]]) throws -> MSTransConfig { try config(scales: scales.map { $0.map { .window($0) } }) }

    /// Written as config.json has them: odd integers and "N/k" strings.
    func config(scales: [[HeadScale]]) throws -> MSTransConfig {
        try MSTransConfig(
            ConfigReader(
                .object([
                    "architecture": .string("ms-trans-encoder"), "vocab_size": .number(Double(vocab)),
                    "d_model": .number(Double(dModel)), "n_layers": .number(Double(layers)), "n_heads": .number(Double(heads)),
                    "d_ff": .number(Double(dFF)), "max_length": .number(Double(maxLength)), "cls_token_id": .number(Double(vocab - 1)),
                    "labels": .array((0..<labels).map { .string("l\($0)") }),
                    "layer_scales": .array(
                        scales.map {
                            .array(
                                $0.map {
                                    if case .window(let w) = $0 { .number(Double(w)) } else { .string($0.description) }
                                })
                        }),
                ])))
    }

    /// The forward computed directly in Double, loop by loop: final states [n, D] and
    /// logits. Head h of layer l attends to |i − j| ≤ (ω − 1)/2 with ω = `window(l, h, n)`.
    func direct(_ text: [Int], window: (Int, Int, Int) -> Int) -> (hidden: [Float], logits: [Float]) {
        let D = dModel, dh = dModel / heads
        func w(_ name: String) -> [Double] { weights[name]!.values.map(Double.init) }
        func linear(_ x: [Double], _ name: String) -> [Double] {
            let m = w(name + ".weight"), b = w(name + ".bias"), k = x.count
            return b.indices.map { o in b[o] + (0..<k).reduce(0) { $0 + m[o * k + $1] * x[$1] } }
        }
        let embed = w("embed.weight")
        var h = ([vocab - 1] + text).map { t in Array(embed[(t * D)..<((t + 1) * D)]) }
        let n = h.count
        for l in 0..<layers {
            let p = "layers.\(l)."
            let gain = w(p + "norm.weight"), bias = w(p + "norm.bias")
            let q = h.map { linear($0, p + "attn.q_proj") }, k = h.map { linear($0, p + "attn.k_proj") }
            let v = h.map { linear($0, p + "attn.v_proj") }
            h = h.indices.map { i in
                var a = [Double](repeating: 0, count: D)
                for hd in 0..<heads {
                    let half = (window(l, hd, n) - 1) / 2, r = (hd * dh)..<((hd + 1) * dh)
                    let js = (0..<n).filter { abs(i - $0) <= half }
                    let s = js.map { j in r.reduce(0) { $0 + q[i][$1] * k[j][$1] } / Double(dh).squareRoot() }
                    let e = s.map { exp($0 - s.max()!) }, z = e.reduce(0, +)
                    for (c, j) in js.enumerated() { for x in r { a[x] += e[c] / z * v[j][x] } }
                }
                let y = linear(a, p + "attn.o_proj").map { max($0, 0) }
                let x = zip(h[i], y).map { $0 + $1 }
                let mean = x.reduce(0, +) / Double(D)
                let variance = x.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(D)
                return x.indices.map { (x[$0] - mean) / (variance + 1e-5).squareRoot() * gain[$0] + bias[$0] }
            }
        }
        let pooled = (0..<D).map { k in h[1...].map { $0[k] }.max()! }
        let logits = linear(linear(h[0] + pooled, "classifier.fc1").map { max($0, 0) }, "classifier.fc2")
        return (h.flatMap { $0 }.map(Float.init), logits.map(Float.init))
    }

    /// The same with attention replaced by v_i: no query or key is used at all.
    func directWindowOne(_ text: [Int]) -> (hidden: [Float], logits: [Float]) {
        var plain = self
        for name in weights.keys where name.contains("q_proj") || name.contains("k_proj") {
            plain.weights[name]!.values = plain.weights[name]!.values.map { _ in 0 }
        }
        return plain.direct(text) { _, _, _ in 1 }
    }
}
