// The event files must be readable by TensorBoard itself (its loader verifies both CRCs of every
// record), and CRC-32C must match the published check value.
#include "trainer/tensorboard_writer.h"

#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sstream>
#include <string>

namespace qtrain {
namespace {

TEST(Crc32c, PublishedCheckValues) {
  // RFC 3720 appendix B.4 and the common "123456789" check value of CRC-32C.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  const std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(TensorBoardWriter, TensorBoardReadsTheScalars) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  testing::ScratchDir dir;
  std::string path;
  {
    TensorBoardWriter writer(dir.file("tb"));
    path = writer.path();
    for (int step = 0; step < 5; ++step) {
      writer.add_scalar("train/loss", 2.5 - 0.25 * step, step);
      writer.add_scalar("train/lr", 1e-4 * (step + 1), step);
    }
    writer.add_scalar("eval/perplexity", 12.75, 1000000000000LL);
    writer.flush();
  }
  std::string out;
  ASSERT_EQ(testing::run_reference_script("tb_read_scalars.py", {path}, &out), 0) << out;
  std::istringstream lines(out);
  std::string line;
  int seen = 0;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("file_version")) {
      EXPECT_EQ(j["file_version"], nlohmann::json::array({"brain.Event:2"}));
      continue;
    }
    const std::string tag = j["tag"];
    const int64_t step = j["step"];
    const double value = j["value"];
    if (tag == "train/loss") {
      EXPECT_FLOAT_EQ(value, 2.5 - 0.25 * step);
    } else if (tag == "train/lr") {
      EXPECT_FLOAT_EQ(value, 1e-4 * (step + 1));
    } else {
      EXPECT_EQ(tag, "eval/perplexity");
      EXPECT_EQ(step, 1000000000000LL);
      EXPECT_FLOAT_EQ(value, 12.75);
    }
    ++seen;
  }
  EXPECT_EQ(seen, 11) << out;
}

}  // namespace
}  // namespace qtrain
