#pragma once

#include <chatkit/chatkit.hpp>
#include <chatkit/aws/credentials.hpp>
#include <chatkit/aws/eventstream.hpp>
#include <chatkit/aws/sigv4.hpp>
#include <chatkit/beast_server.hpp>
#include <chatkit/bedrock_provider.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/httplib_client_pool.hpp>
#include <chatkit/httplib_server.hpp>
#include <chatkit/lambda_runtime.hpp>
#include <chatkit/openai_provider.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/rate_limiter.hpp>
#include <chatkit/request_id.hpp>
#include <chatkit/sqlite_store.hpp>
