// The shared frame of the command-line tools: parses the command line, runs the tool, and turns
// every failure into one stderr line "<tool>: <message>" and an exit code (core/error.h):
// --help prints the help and exits 0, a bad command line exits 2, qtrain::Error its own kind's
// code, anything else 70 (internal error).
//
//   int main(int argc, char** argv) {
//     CLI::App app{"...", "qfoo"};
//     app.add_option(...);
//     return qtrain::run_cli("qfoo", app, argc, argv, [&] { return run(...); });
//   }
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace qtrain {

// `body` runs after a successful parse; its return value is the exit code.
int run_cli(const std::string& tool, CLI::App& app, int argc, char** argv,
            const std::function<int()>& body);

}  // namespace qtrain
