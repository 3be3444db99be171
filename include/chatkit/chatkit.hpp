// Everything in chatkit's core: the domain types, the four concepts and the service.
#pragma once

#include "chatkit/cache.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/http.hpp"
#include "chatkit/key_directory.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/null_mutex.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/response_sink.hpp"
#include "chatkit/service.hpp"
#include "chatkit/store.hpp"
#include "chatkit/task.hpp"
#include "chatkit/version.hpp"
#include "chatkit/worker_pool.hpp"
