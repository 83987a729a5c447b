import Foundation

/// Hugging Face GPT-2 checkpoints (`save_pretrained`) as transformer-decoder models:
/// the config keys are renamed, the fused `c_attn` projection is split into q, k, v,
/// and Conv1D weights, stored [in, out], are transposed to Linear's [out, in].
public enum GPT2 {
    static func isGPT2(_ config: JSONValue) -> Bool {
        config["architecture"] == nil && config["model_type"]?.stringValue == "gpt2"
    }

    /// config.json in msgen's terms (Sources/MSModels/README.md, "Tensor names"). The original keys are kept under "source_config".
    static func translate(_ hf: JSONValue) throws -> JSONValue {
        guard let o = hf.objectValue else { throw MSGenError("config is not a JSON object") }
        func int(_ k: String) throws -> JSONValue {
            guard let v = o[k], v != .null else { throw MSGenError("GPT-2 config is missing '\(k)'") }
            guard let i = v.intValue, i >= 1 else { throw MSGenError("config '\(k)' must be an integer ≥ 1, not \(v.compactText)") }
            return v
        }
        for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"] where o[flag]?.boolValue == true {
            throw MSGenError("GPT-2 config sets \(flag), which msgen does not support")
        }
        if o["scale_attn_weights"]?.boolValue == false { throw MSGenError("GPT-2 config turns off scale_attn_weights, which msgen does not support") }
        let activation: String
        switch o["activation_function"]?.stringValue ?? "gelu_new" {
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": activation = "gelu_tanh"
        case "gelu": activation = "gelu"
        case let other: throw MSGenError("GPT-2 activation_function '\(other)' is not supported (gelu_new or gelu)")
        }
        let d = try int("n_embd")
        var out: [String: JSONValue] = [
            "architecture": .string("transformer-decoder"), "vocab_size": try int("vocab_size"),
            "d_model": d, "n_layers": try int("n_layer"), "n_heads": try int("n_head"),
            "d_ff": o["n_inner"] == nil || o["n_inner"] == .null ? .number(4 * Double(d.intValue!)) : try int("n_inner"),
            "max_positions": try int("n_positions"), "activation": .string(activation),
            "norm_eps": o["layer_norm_epsilon"] ?? .number(1e-5),
            "tie_embeddings": o["tie_word_embeddings"] ?? .bool(true),
            "source_config": hf,
        ]
        if let eos = o["eos_token_id"], eos.intValue != nil { out["eos_token_id"] = eos }
        return .object(out)
    }

    /// The tensors under msgen's names.
    static func mapTensors(_ tensors: [(name: String, tensor: Tensor)], config: JSONValue) throws -> [(name: String, tensor: Tensor)] {
        var byName: [String: Tensor] = [:]
        for (n, t) in tensors {
            let name = n.hasPrefix("transformer.") ? String(n.dropFirst("transformer.".count)) : n
            // With and without the prefix are the same tensor: having both is ambiguous.
            try check(byName.updateValue(t, forKey: name) == nil, "GPT-2 checkpoint has \(name) twice (with and without 'transformer.')")
        }
        func take(_ n: String) throws -> Tensor {
            guard let t = byName.removeValue(forKey: n) else { throw MSGenError("GPT-2 checkpoint is missing \(n)") }
            return t
        }
        // Tensors that are split or transposed are checked here, before any byte is read;
        // the others keep their shape and are checked against the config by validation.
        func take(_ n: String, _ shape: [Int]) throws -> Tensor {
            let t = try take(n)
            try check(
                t.shape == shape && t.dtype.elementSize != nil,
                "GPT-2 checkpoint: \(n) has shape \(shapeString(t.shape)), the config needs \(shapeString(shape))")
            return t
        }
        // `config` is translate's output, whose sizes it checked to be integers ≥ 1.
        func size(_ key: String) -> Int { config[key]?.intValue ?? 0 }
        let D = size("d_model"), F = size("d_ff"), tied = config["tie_embeddings"]?.boolValue ?? true
        var out: [(String, Tensor)] = [("embed.weight", try take("wte.weight")), ("pos.weight", try take("wpe.weight"))]
        for i in 0..<size("n_layers") {
            let h = "h.\(i).", p = "layers.\(i)."
            let cAttn = try take(h + "attn.c_attn.weight", [D, 3 * D]).transposed(), cAttnBias = try take(h + "attn.c_attn.bias", [3 * D])
            for (j, x) in ["q", "k", "v"].enumerated() {
                out.append((p + "attn.\(x)_proj.weight", cAttn.rows(j * D..<(j + 1) * D)))
                out.append((p + "attn.\(x)_proj.bias", cAttnBias.rows(j * D..<(j + 1) * D)))
            }
            out += [
                (p + "attn.o_proj.weight", try take(h + "attn.c_proj.weight", [D, D]).transposed()),
                (p + "attn.o_proj.bias", try take(h + "attn.c_proj.bias")),
                (p + "norm1.weight", try take(h + "ln_1.weight")), (p + "norm1.bias", try take(h + "ln_1.bias")),
                (p + "norm2.weight", try take(h + "ln_2.weight")), (p + "norm2.bias", try take(h + "ln_2.bias")),
                (p + "mlp.fc1.weight", try take(h + "mlp.c_fc.weight", [D, F]).transposed()), (p + "mlp.fc1.bias", try take(h + "mlp.c_fc.bias")),
                (p + "mlp.fc2.weight", try take(h + "mlp.c_proj.weight", [F, D]).transposed()), (p + "mlp.fc2.bias", try take(h + "mlp.c_proj.bias")),
            ]
            // Old checkpoints carry the causal mask as a buffer; it is not a weight.
            byName.removeValue(forKey: h + "attn.bias"); byName.removeValue(forKey: h + "attn.masked_bias")
        }
        out += [("norm_f.weight", try take("ln_f.weight")), ("norm_f.bias", try take("ln_f.bias"))]
        if let head = byName.removeValue(forKey: "lm_head.weight"), !tied { out.append(("lm_head.weight", head)) }
        out += byName.map { ($0.key, $0.value) }  // left for validation to report as unexpected
        return out
    }
}

extension Tensor {
    /// A 2-D tensor transposed. Callers check the shape and that the dtype has a fixed
    /// element size (`GPT2.mapTensors` does, before calling).
    func transposed() -> Tensor {
        precondition(shape.count == 2 && dtype.elementSize != nil)
        let es = dtype.elementSize!
        let (r, c) = (shape[0], shape[1])
        let out = TensorStorage(byteCount: byteCount)
        let src = UnsafeRawPointer(storage.bytes.baseAddress!), dst = out.bytes.baseAddress!
        for i in 0..<r { for j in 0..<c { (dst + (j * r + i) * es).copyMemory(from: src + (i * c + j) * es, byteCount: es) } }
        return Tensor(dtype: dtype, shape: [c, r], storage: out)
    }

    /// Rows `range` of the first dimension (which the caller has checked is inside it).
    func rows(_ range: Range<Int>) -> Tensor {
        precondition(!shape.isEmpty && range.lowerBound >= 0 && range.upperBound <= shape[0])
        let rowBytes = byteCount / max(shape[0], 1)
        let out = TensorStorage(byteCount: range.count * rowBytes)
        out.bytes.copyMemory(
            from: UnsafeRawBufferPointer(
                rebasing: UnsafeRawBufferPointer(storage.bytes)[(range.lowerBound * rowBytes)..<(range.upperBound * rowBytes)]))
        return Tensor(dtype: dtype, shape: [range.count] + shape.dropFirst(), storage: out)
    }
}

// MARK: - vocab.json + merges.txt

extension GPT2 {
    /// The tokenizer.json that Hugging Face tokenizers builds from GPT-2's vocab.json and
    /// merges.txt (as transformers' GPT2Converter sets it up): a BPE model with those
    /// merges, the ByteLevel pre-tokenizer (no prefix space), decoder and post-processor,
    /// and "<|endoftext|>" as a special added token when the vocabulary has it.
    public static func tokenizerJSON(vocab: Data, merges: Data, what: String) throws -> String {
        guard let vocabObject = try? JSONSerialization.jsonObject(with: vocab) as? [String: Any] else {
            throw MSGenError("\(what): vocab.json is not a JSON object of token → id")
        }
        // Keyed by Swift String, which is safe here: byte-level tokens are spelt in an
        // alphabet without combining marks, so no two of them are canonically equivalent.
        var ids: [String: Int] = [:]
        for (token, id) in vocabObject {
            guard let i = id as? Int, i >= 0 else { throw MSGenError("\(what): vocab.json gives \(token.debugDescription) no valid id") }
            ids[token] = i
        }
        guard let text = String(data: merges, encoding: .utf8) else { throw MSGenError("\(what): merges.txt is not UTF-8") }
        var pairs: [[String]] = []
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        for (n, line) in lines.enumerated() {
            if n == 0 && line.hasPrefix("#version") { continue }
            // As tokenizers' BPE.from_file: exactly two tokens separated by one space.
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw MSGenError("\(what): merges.txt line \(n + 1) is not two tokens separated by a space") }
            pairs.append(parts.map(String.init))
        }
        let byteLevel: (Bool, Bool) -> [String: Any] = { prefixSpace, trimOffsets in
            ["type": "ByteLevel", "add_prefix_space": prefixSpace, "trim_offsets": trimOffsets, "use_regex": true]
        }
        let eos = "<|endoftext|>"
        let added: [[String: Any]] =
            ids[eos].map {
                [["id": $0, "content": eos, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true]]
            } ?? []
        let root: [String: Any] = [
            "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added, "normalizer": NSNull(),
            "pre_tokenizer": byteLevel(false, true), "post_processor": byteLevel(true, false), "decoder": byteLevel(true, true),
            "model": [
                "type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": ids, "merges": pairs,
            ] as [String: Any],
        ]
        let json = try JSONSerialization.data(withJSONObject: root, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: json, as: UTF8.self)
    }
}
