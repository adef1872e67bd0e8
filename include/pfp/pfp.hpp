#ifndef PFP_PFP_HPP
#define PFP_PFP_HPP

// pfp: run functions in parallel worker processes. A crash, a hang or a leak in one function
// costs that function's Result and nothing else.

#include <pfp/batch.hpp>
#include <pfp/error.hpp>
#include <pfp/executor.hpp>
#include <pfp/exit_status.hpp>
#include <pfp/future.hpp>
#include <pfp/manager.hpp>
#include <pfp/map.hpp>
#include <pfp/multiprocessor.hpp>
#include <pfp/options.hpp>
#include <pfp/progress.hpp>
#include <pfp/result.hpp>
#include <pfp/serialization.hpp>
#include <pfp/stats.hpp>
#include <pfp/value.hpp>
#include <pfp/worker.hpp>

#define PFP_VERSION_MAJOR 0
#define PFP_VERSION_MINOR 1
#define PFP_VERSION_PATCH 0

#endif  // PFP_PFP_HPP
