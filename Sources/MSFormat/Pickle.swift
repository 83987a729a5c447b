/// A restricted unpickler for `torch.save` checkpoints.
///
/// Python's pickle is a little stack machine whose GLOBAL + REDUCE opcodes call any
/// function by name; that is how a malicious checkpoint runs `os.system`. This reader
/// implements the opcodes that state dicts use and resolves only the handful of globals
/// that rebuild tensors and dicts; any other global is refused before anything is built.
/// Written by hand because no Swift library reads pickles, let alone safely.
struct Unpickler {
    final class Dict { var items: [(key: PickleValue, value: PickleValue)] = [] }
    final class List { var items: [PickleValue] = [] }

    struct StorageRef { let key: String; let dtype: StorageType; let count: Int }
    struct TensorRef { let storage: StorageRef; let offset: Int; let shape: [Int]; let stride: [Int] }

    enum StorageType: String, CaseIterable {
        case FloatStorage, HalfStorage, BFloat16Storage, DoubleStorage, IntStorage, LongStorage
        var elementSize: Int {
            switch self {
            case .HalfStorage, .BFloat16Storage: 2;
            case .FloatStorage, .IntStorage: 4;
            case .DoubleStorage, .LongStorage: 8
            }
        }
    }

    /// The functions a state dict needs; nothing else is ever looked up.
    enum Global: Equatable {
        case orderedDict, rebuildTensor, rebuildParameter, rebuildParameterWithState
        case storage(StorageType)

        init?(module: String, name: String) {
            switch (module, name) {
            case ("collections", "OrderedDict"): self = .orderedDict
            case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensor
            case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
            case ("torch._utils", "_rebuild_parameter_with_state"): self = .rebuildParameterWithState
            case ("torch", let s):
                guard let t = StorageType(rawValue: s) else { return nil }
                self = .storage(t)
            default: return nil
            }
        }
    }

    indirect enum PickleValue {
        case none, bool(Bool), int(Int), float(Double), string(String), bytes([UInt8])
        /// A tuple knows how deeply tuples nest inside it (`tupleDepth`): values, so freeing
        /// one recurses that deep.
        case tuple([PickleValue], depth: Int), list(List), dict(Dict)
        case global(Global), storage(StorageRef), tensor(TensorRef)
    }

    /// Bounds that no state dict comes near but a hostile pickle would pass: how many
    /// MARKs may be open at once, and how many values the memo and the stack may hold.
    /// Values are shared by reference (dicts and lists are classes, tuples copy on write),
    /// so memory stays proportional to the pickle's size; these make the error clear.
    static let maxMarkDepth = 1_000
    /// How deeply tuples may nest (a state dict's go 2 deep); "(((…)))" a million deep
    /// would overflow the stack when it is freed.
    static let maxTupleDepth = 100
    static let maxValues = 10_000_000
    private let valueLimit: Int

    private let data: [UInt8]
    private var pos = 0
    private var stack: [PickleValue] = []
    /// Where each open MARK starts in `stack` (as Python's own unpickler keeps them), so
    /// that closing one costs nothing however deep the stack is.
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    /// Every dict and list built, so that `release` can empty them: a pickle can make one
    /// contain itself (a cycle that reference counting never frees), or nest them a
    /// million deep (freeing that would recurse as deep).
    private var dicts: [Dict] = []
    private var lists: [List] = []
    private let what: String

    /// `maxValues` is lowered only by tests, to reach the limit without a 10 MB pickle.
    init(_ data: [UInt8], what: String, maxValues: Int = Unpickler.maxValues) {
        self.data = data; self.what = what; valueLimit = maxValues
    }

    private func fail(_ why: String) -> MSGenError { MSGenError("\(what): \(why)") }

    private mutating func bytes(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= data.count - pos else { throw fail("the pickle is truncated") }
        defer { pos += n }
        return data[pos..<(pos + n)]
    }
    private mutating func byte() throws -> UInt8 { try bytes(1).first! }
    private mutating func uint(_ n: Int) throws -> Int {  // little-endian unsigned
        var v = 0
        for (i, b) in try bytes(n).enumerated() { v |= Int(b) << (8 * i) }
        return v
    }
    private mutating func line() throws -> String {
        guard let end = data[pos...].firstIndex(of: 10) else { throw fail("the pickle is truncated") }
        defer { pos = end + 1 }
        return String(decoding: data[pos..<end], as: UTF8.self)
    }
    private mutating func text(_ n: Int) throws -> String {
        guard let s = String(validating: try bytes(n), as: UTF8.self) else { throw fail("the pickle holds a string that is not UTF-8") }
        return s
    }
    /// Values below the innermost open MARK belong to an enclosing frame, as in Python.
    private mutating func pop() throws -> PickleValue {
        guard stack.count > (marks.last ?? 0), let v = stack.popLast() else { throw fail("the pickle is malformed (stack underflow)") }
        return v
    }
    private mutating func push(_ v: PickleValue) throws {
        guard stack.count < valueLimit else { throw fail("the pickle holds more than \(valueLimit) values on its stack; it is not a state dict") }
        stack.append(v)
    }
    private mutating func pushMark() throws {
        guard marks.count < Self.maxMarkDepth else { throw fail("the pickle nests deeper than \(Self.maxMarkDepth) levels; it is not a state dict") }
        marks.append(stack.count)
    }
    private mutating func popMark() throws -> [PickleValue] {
        guard let m = marks.popLast(), m <= stack.count else { throw fail("the pickle is malformed (no mark)") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }
    private mutating func remember(_ key: Int) throws {
        guard memo.count < valueLimit || memo[key] != nil else {
            throw fail("the pickle memoizes more than \(valueLimit) values; it is not a state dict")
        }
        memo[key] = try top()
    }

    mutating func load() throws -> PickleValue {
        while true {
            let op = try byte()
            switch op {
            case 0x80: _ = try byte()  // PROTO
            case 0x95: _ = try bytes(8)  // FRAME
            case 0x2E: return try pop()  // STOP
            case 0x28: try pushMark()  // MARK
            case 0x7D: try push(.dict(newDict()))  // EMPTY_DICT
            case 0x5D: try push(.list(newList()))  // EMPTY_LIST
            case 0x29: try push(try tuple([]))  // EMPTY_TUPLE
            case 0x4E: try push(.none)  // NONE
            case 0x88: try push(.bool(true))  // NEWTRUE
            case 0x89: try push(.bool(false))  // NEWFALSE
            case 0x4B: try push(.int(try uint(1)))  // BININT1
            case 0x4D: try push(.int(try uint(2)))  // BININT2
            case 0x4A: try push(.int(Int(Int32(truncatingIfNeeded: try uint(4)))))  // BININT
            case 0x8A:  // LONG1
                let n = Int(try byte())
                guard n <= 8 else { throw fail("the pickle holds an integer too large for msgen") }
                let raw = try bytes(n)
                var v: Int64 = 0
                for (i, b) in raw.enumerated() { v |= Int64(b) << (8 * Int64(i)) }
                if n > 0 && n < 8 && raw.last! & 0x80 != 0 { v -= Int64(1) << (8 * Int64(n)) }
                try push(.int(Int(v)))
            case 0x47:  // BINFLOAT (big-endian)
                var v: UInt64 = 0
                for b in try bytes(8) { v = v << 8 | UInt64(b) }
                try push(.float(Double(bitPattern: v)))
            case 0x58: try push(.string(try text(try uint(4))))  // BINUNICODE
            case 0x8C: try push(.string(try text(try uint(1))))  // SHORT_BINUNICODE
            case 0x8D: try push(.string(try text(try uint(8))))  // BINUNICODE8
            case 0x43: try push(.bytes(Array(try bytes(try uint(1)))))  // SHORT_BINBYTES
            case 0x42: try push(.bytes(Array(try bytes(try uint(4)))))  // BINBYTES
            case 0x71: try remember(try uint(1))  // BINPUT
            case 0x72: try remember(try uint(4))  // LONG_BINPUT
            case 0x94: try remember(memo.count)  // MEMOIZE
            case 0x68, 0x6A:  // BINGET, LONG_BINGET
                let k = try uint(op == 0x68 ? 1 : 4)
                guard let v = memo[k] else { throw fail("the pickle is malformed (unknown memo \(k))") }
                try push(v)
            case 0x74: try push(try tuple(try popMark()))  // TUPLE
            case 0x85: try push(try tuple([try pop()]))  // TUPLE1
            case 0x86: let b = try pop(); let a = try pop(); try push(try tuple([a, b]))  // TUPLE2
            case 0x87: let c = try pop(); let b = try pop(); let a = try pop(); try push(try tuple([a, b, c]))
            case 0x63:  // GLOBAL "module\nname\n"
                let module = try line(), name = try line()
                try push(.global(try resolve(module, name)))
            case 0x93:  // STACK_GLOBAL
                guard case .string(let name) = try pop(), case .string(let module) = try pop() else {
                    throw fail("the pickle is malformed (STACK_GLOBAL)")
                }
                try push(.global(try resolve(module, name)))
            case 0x51:  // BINPERSID
                try push(try persistentLoad(try pop()))
            case 0x52:  // REDUCE
                let args = try pop()
                guard case .global(let g) = try pop(), case .tuple(let a, _) = args else {
                    throw fail("the pickle calls something that is not an allowed function")
                }
                try push(try call(g, a))
            case 0x62:  // BUILD
                _ = try pop()  // state: only OrderedDict's _metadata, which carries nothing we need
                guard case .dict = try top() else { throw fail("the pickle sets state on an object msgen does not rebuild") }
            case 0x73:  // SETITEM
                let v = try pop(), k = try pop()
                try dictOnTop().items.append((k, v))
            case 0x75:  // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("the pickle is malformed (SETITEMS)") }
                let d = try dictOnTop()
                for i in stride(from: 0, to: items.count, by: 2) { d.items.append((items[i], items[i + 1])) }
            case 0x61:  // APPEND
                let v = try pop()
                guard case .list(let l) = try top() else { throw fail("the pickle is malformed (APPEND)") }
                l.items.append(v)
            case 0x65:  // APPENDS
                let items = try popMark()
                guard case .list(let l) = try top() else { throw fail("the pickle is malformed (APPENDS)") }
                l.items += items
            default:
                throw fail(String(format: "the pickle uses opcode 0x%02x, which msgen does not allow in a checkpoint", op))
            }
        }
    }

    private mutating func newDict() -> Dict { let d = Dict(); dicts.append(d); return d }
    private mutating func newList() -> List { let l = List(); lists.append(l); return l }

    private func tuple(_ items: [PickleValue]) throws -> PickleValue {
        let inner = items.map { if case .tuple(_, let d) = $0 { d } else { 0 } }.max() ?? 0
        guard inner < Self.maxTupleDepth else {
            throw fail("the pickle nests tuples deeper than \(Self.maxTupleDepth) levels; it is not a state dict")
        }
        return .tuple(items, depth: inner + 1)
    }

    /// Empties every dict and list the pickle built, once nothing built from them is
    /// needed: cycles are broken and nothing nested is freed recursively.
    mutating func release() {
        for d in dicts { d.items = [] }
        for l in lists { l.items = [] }
        dicts = []; lists = []; stack = []; memo = [:]
    }

    private func top() throws -> PickleValue {
        guard stack.count > (marks.last ?? 0), let v = stack.last else { throw fail("the pickle is malformed (stack underflow)") }
        return v
    }
    private func dictOnTop() throws -> Dict {
        guard case .dict(let d) = try top() else { throw fail("the pickle is malformed (SETITEM outside a dict)") }
        return d
    }

    private func resolve(_ module: String, _ name: String) throws -> Global {
        guard let g = Global(module: module, name: name) else {
            throw fail(
                "refusing to load: the pickle calls \(module).\(name); msgen only rebuilds tensors and dicts and never runs code from a checkpoint")
        }
        return g
    }

    /// torch.save writes each storage as persistent id ('storage', type, key, location, numel).
    private func persistentLoad(_ pid: PickleValue) throws -> PickleValue {
        guard case .tuple(let t, _) = pid, t.count == 5, case .string("storage") = t[0],
            case .global(.storage(let type)) = t[1], case .string(let key) = t[2],
            case .int(let count) = t[4], count >= 0
        else {
            throw fail("the pickle references a storage msgen does not understand")
        }
        return .storage(StorageRef(key: key, dtype: type, count: count))
    }

    private mutating func call(_ g: Global, _ args: [PickleValue]) throws -> PickleValue {
        switch g {
        case .orderedDict:
            return .dict(newDict())
        case .rebuildTensor:  // (storage, storage_offset, size, stride, requires_grad, hooks[, metadata])
            guard args.count >= 4, case .storage(let s) = args[0], case .int(let offset) = args[1],
                case .tuple(let size, _) = args[2], case .tuple(let stride, _) = args[3]
            else {
                throw fail("the pickle rebuilds a tensor with arguments msgen does not understand")
            }
            let shape = try size.map { v -> Int in
                guard case .int(let i) = v else { throw fail("bad tensor size") }; return i
            }
            let strides = try stride.map { v -> Int in
                guard case .int(let i) = v else { throw fail("bad tensor stride") }; return i
            }
            return .tensor(TensorRef(storage: s, offset: offset, shape: shape, stride: strides))
        case .rebuildParameter, .rebuildParameterWithState:  // (tensor, requires_grad, hooks[, state])
            guard let first = args.first, case .tensor = first else { throw fail("the pickle rebuilds a parameter without a tensor") }
            return first
        case .storage:
            throw fail("the pickle calls a storage type, which msgen does not allow")
        }
    }
}
