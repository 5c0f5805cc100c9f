// Where a model named by a recipe, an adapter or a command line lives on disk.
#pragma once

#include <string>

namespace qtrain {

// qtrain's cache: $QTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/qtrain, else ~/.cache/qtrain.
std::string cache_root();

// A model directory for model.path: "builtin:<preset>" is generated once (deterministically) into
// $QTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/qtrain, else ~/.cache/qtrain; anything else is a
// directory that must hold config.json (Error(kIo) naming model.path otherwise).
std::string resolve_model_dir(const std::string& path);

}  // namespace qtrain
