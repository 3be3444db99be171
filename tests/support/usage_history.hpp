// The usage records every usage store test writes: the SQLite store's and the DynamoDB store's
// cases compare their summaries of the same history with the reference model's. They are the
// usage store kit's own (chatkit/testing/usage_store.hpp), so the kit and these tests agree.
#pragma once

#include <chatkit/testing/usage_store.hpp>

namespace test_support {

using chatkit::testing::day_ms;
using chatkit::testing::dec1;
using chatkit::testing::usage_history;
using chatkit::testing::usage_record_of;

} // namespace test_support
