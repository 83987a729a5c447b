/// Hugging Face GPT-2 checkpoints (`save_pretrained`) as transformer-decoder models:
/// the config keys are renamed, the fused `c_attn` projection is split into q, k, v,
/// and Conv1D weights, stored [in, out], are transposed to Linear's [out, in].
enum GPT2 {
    static func isGPT2(_ config: JSONValue) -> Bool {
        config["architecture"] == nil && config["model_type"]?.stringValue == "gpt2"
    }

    /// config.json in DESIGN §4 terms. The original keys are kept under "source_config".
    static func translate(_ hf: JSONValue) throws -> JSONValue {
        guard let o = hf.objectValue else { throw MSGenError("config is not a JSON object") }
        func int(_ k: String) throws -> JSONValue {
            guard let v = o[k], v.intValue != nil else { throw MSGenError("GPT-2 config is missing '\(k)'") }
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
            "d_ff": o["n_inner"]?.intValue != nil ? o["n_inner"]! : .number(4 * Double(d.intValue!)),
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
            byName[name] = t
        }
        func take(_ n: String) throws -> Tensor {
            guard let t = byName.removeValue(forKey: n) else { throw MSGenError("GPT-2 checkpoint is missing \(n)") }
            return t
        }
        // The translated config (DESIGN §4 keys), already checked to hold these integers.
        let D = max(0, config["d_model"]?.intValue ?? 0), layers = max(0, config["n_layers"]?.intValue ?? 0)
        let tied = config["tie_embeddings"]?.boolValue ?? false
        var out: [(String, Tensor)] = [("embed.weight", try take("wte.weight")), ("pos.weight", try take("wpe.weight"))]
        for i in 0..<layers {
            let h = "h.\(i).", p = "layers.\(i)."
            let cAttn = try take(h + "attn.c_attn.weight").transposed(), cAttnBias = try take(h + "attn.c_attn.bias")
            try check(cAttn.shape == [3 * D, D], "GPT-2 \(h)attn.c_attn.weight has shape \(shapeString(cAttn.shape.reversed())), expected [\(D), \(3 * D)]")
            for (j, x) in ["q", "k", "v"].enumerated() {
                out.append((p + "attn.\(x)_proj.weight", cAttn.rows(j * D..<(j + 1) * D)))
                out.append((p + "attn.\(x)_proj.bias", cAttnBias.rows(j * D..<(j + 1) * D)))
            }
            out += [(p + "attn.o_proj.weight", try take(h + "attn.c_proj.weight").transposed()),
                    (p + "attn.o_proj.bias", try take(h + "attn.c_proj.bias")),
                    (p + "norm1.weight", try take(h + "ln_1.weight")), (p + "norm1.bias", try take(h + "ln_1.bias")),
                    (p + "norm2.weight", try take(h + "ln_2.weight")), (p + "norm2.bias", try take(h + "ln_2.bias")),
                    (p + "mlp.fc1.weight", try take(h + "mlp.c_fc.weight").transposed()), (p + "mlp.fc1.bias", try take(h + "mlp.c_fc.bias")),
                    (p + "mlp.fc2.weight", try take(h + "mlp.c_proj.weight").transposed()), (p + "mlp.fc2.bias", try take(h + "mlp.c_proj.bias"))]
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
    /// A 2-D tensor transposed (any dtype with a fixed element size).
    func transposed() -> Tensor {
        guard shape.count == 2, let es = dtype.elementSize else { return self }
        let (r, c) = (shape[0], shape[1])
        let out = TensorStorage(byteCount: byteCount)
        let src = UnsafeRawPointer(storage.bytes.baseAddress!), dst = out.bytes.baseAddress!
        for i in 0..<r { for j in 0..<c { (dst + (j * r + i) * es).copyMemory(from: src + (i * c + j) * es, byteCount: es) } }
        return Tensor(dtype: dtype, shape: [c, r], storage: out)
    }

    /// Rows `range` of the first dimension.
    func rows(_ range: Range<Int>) -> Tensor {
        let rowBytes = byteCount / max(shape[0], 1)
        let out = TensorStorage(byteCount: range.count * rowBytes)
        out.bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(storage.bytes)[(range.lowerBound * rowBytes)..<(range.upperBound * rowBytes)]))
        return Tensor(dtype: dtype, shape: [range.count] + shape.dropFirst(), storage: out)
    }
}
