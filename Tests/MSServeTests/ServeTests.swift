import HummingbirdTesting
import XCTest

@testable import MSServe
