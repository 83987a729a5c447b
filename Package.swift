// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "msgen",
    products: [
        // What other Swift packages depend on: the file format and the kernels today,
        // the models and the generator as they land.
        .library(name: "MSGen", targets: ["MSFormat", "MSKernels", "MSModels", "MSTokenizer", "MSGen"]),
        .executable(name: "msgen", targets: ["msgen"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", from: "0.9.19"),
        // msgen serve: the HTTP server, its graceful stop and its /metrics.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
    ],
    targets: [
        // System libraries: module maps only, linked through pkg-config.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),

        .target(
            name: "MSFormat",
            dependencies: ["CZstd", .product(name: "ZIPFoundation", package: "ZIPFoundation")],
            exclude: ["FORMAT.md"]
        ),
        // The element-wise loops, in C so that they can run as AVX2 + FMA (see cvector.c).
        .target(name: "CVector"),
        .target(name: "MSKernels", dependencies: ["CBLAS", "CVector"]),
        .target(name: "MSTokenizer", dependencies: ["MSFormat"]),
        .target(name: "MSModels", dependencies: ["MSFormat", "MSKernels"], exclude: ["README.md"]),
        .target(name: "MSGen", dependencies: ["MSFormat", "MSKernels", "MSModels", "MSTokenizer"]),
        // msgen serve's request bodies, decoded and checked: no Hummingbird, so that the
        // fuzz target `http` links them without building the HTTP stack with sanitizers.
        .target(name: "MSServeRequests", dependencies: ["MSGen"]),
        // msgen serve: an OpenAI-compatible HTTP server over one copy of the weights.
        .target(
            name: "MSServe",
            dependencies: [
                "MSFormat", "MSKernels", "MSModels", "MSTokenizer", "MSGen", "MSServeRequests",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "msgen",
            dependencies: [
                "MSFormat", "MSKernels", "MSModels", "MSTokenizer", "MSGen", "MSServe",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // What the test targets share: running the built msgen binary, the fixture models.
        .target(
            name: "MSGenTestSupport", dependencies: ["MSGen", "MSModels", "MSFormat", "MSTokenizer"], path: "Tests/Support"),
        .testTarget(name: "MSKernelsTests", dependencies: ["MSKernels"]),
        .testTarget(name: "MSModelsTests", dependencies: ["MSModels", "MSFormat"]),
        .testTarget(name: "MSGenTests", dependencies: ["MSGen", "MSModels", "MSFormat", "MSTokenizer", "msgen", "MSGenTestSupport"]),
        .testTarget(
            name: "MSFormatTests",
            dependencies: ["MSFormat", "MSKernels", "MSModels", "msgen", "MSGenTestSupport"]
        ),
        .testTarget(name: "MSTokenizerTests", dependencies: ["MSTokenizer", "MSGen"]),
        .testTarget(
            name: "MSServeTests",
            dependencies: [
                "MSServe", "MSServeRequests", "MSGen", "MSModels", "MSFormat", "MSTokenizer", "MSGenTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
        // Fuzzing (Tests/Fuzz/README.md): the entry functions are an ordinary library, so
        // that `swift test` replays every committed crash input through the same code.
        // The libFuzzer mains (Tests/Fuzz/Targets) are no target: tools/fuzz.sh compiles
        // them with swiftc against a sanitizer build of this library in .build-fuzz, so an
        // ordinary build never sees a file without `main`.
        .target(
            name: "MSFuzzEntries",
            dependencies: ["MSFormat", "MSModels", "MSTokenizer", "MSServeRequests", .product(name: "ZIPFoundation", package: "ZIPFoundation")],
            path: "Tests/Fuzz/Entries"
        ),
        .testTarget(name: "FuzzRegressionTests", dependencies: ["MSFuzzEntries"], path: "Tests/Fuzz/Regression"),
        // A toy architecture registered from outside MSModels, converted and scored.
        .testTarget(name: "ArchitectureTests", dependencies: ["MSModels", "MSFormat", "MSGen", "MSTokenizer", "msgen"]),
    ],
    // Swift 5 mode: the kernels share raw buffers across threads by design (disjoint
    // ranges per worker), which Swift 6's checker cannot see.
    swiftLanguageModes: [.v5]
)
