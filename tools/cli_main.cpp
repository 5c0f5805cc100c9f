#include "tools/cli_main.h"

#include "core/error.h"

#include <c10/util/Exception.h>

#include <filesystem>
#include <iostream>

namespace qtrain {

int run_cli(const std::string& tool, CLI::App& app, int argc, char** argv,
            const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << tool << ": " << e.what() << "\n";
    return static_cast<int>(ErrorKind::kUsage);
  }
  try {
    return body();
  } catch (const Error& e) {
    std::cerr << tool << ": " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::filesystem::filesystem_error& e) {
    // Creating, renaming or listing files failed (a path below a regular file, a full disk):
    // an input/output problem with the paths the user gave, not a bug.
    std::cerr << tool << ": " << e.what() << "\n";
    return static_cast<int>(ErrorKind::kIo);
  } catch (const c10::Error& e) {
    std::cerr << tool << ": " << e.what_without_backtrace() << "\n";
    return static_cast<int>(ErrorKind::kInternal);
  } catch (const std::exception& e) {
    std::cerr << tool << ": internal error: " << e.what() << "\n";
    return static_cast<int>(ErrorKind::kInternal);
  }
}

}  // namespace qtrain
