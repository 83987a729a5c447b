// The libFuzzer entry point of the http target (built by tools/fuzz.sh; no main: libFuzzer's).
import MSFuzzEntries

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTarget.http.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
