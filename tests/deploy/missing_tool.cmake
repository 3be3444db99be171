# Fails a test whose tool is missing, saying which and how to get it: cmake -DWHY=... -P missing_tool.cmake
message(FATAL_ERROR "${WHY}")
