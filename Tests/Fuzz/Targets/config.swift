// The libFuzzer entry point of the config target (built by tools/fuzz.sh; no main: libFuzzer's).
import MSFuzzEntries

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTarget.config.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
