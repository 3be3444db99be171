# Drives the consumer tests (tests/consumer/CMakeLists.txt).
#   cmake -DMODE=install -DBUILD_DIR=<chatkit build> -DPREFIX=<dir> -P run_consumer.cmake
#     installs the build into a fresh PREFIX.
#   cmake -DMODE=subdirectory|package -DAPP_SOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=...
#         -DCXX_COMPILER=... [-DMAKE_PROGRAM=...] [-DBUILD_TYPE=...] [-DPREFIX_PATH=a|b]
#         [-DCHATKIT_SOURCE_DIR=...] [-DPREFIX=...] -P run_consumer.cmake
#     configures, builds and runs the consumer project in tests/consumer/app, from scratch: the
#     app, and the test of its third-party plugin against chatkit's conformance kit.
cmake_minimum_required(VERSION 3.20)

function(step name)
  message(STATUS "consumer (${MODE}): ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): ${name} failed (${rc})")
  endif()
endfunction()

if(MODE STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}") # nothing left from an earlier install
  step(install "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}")
  return()
endif()

foreach(var MODE APP_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()

set(build_dir "${WORK_DIR}/build")
set(data_dir "${WORK_DIR}/data")
file(REMOVE_RECURSE "${WORK_DIR}") # a fresh build: no cache left over from an earlier run
file(MAKE_DIRECTORY "${WORK_DIR}")

# The parent's CMAKE_PREFIX_PATH arrives '|'-separated (a ';' would split the ctest argument).
string(REPLACE "|" ";" prefix_path "${PREFIX_PATH}")
set(args -S "${APP_SOURCE_DIR}" -B "${build_dir}" -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCHATKIT_CONSUME=${MODE}")
if(MAKE_PROGRAM)
  list(APPEND args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(BUILD_TYPE)
  list(APPEND args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
if(MODE STREQUAL "subdirectory")
  list(APPEND args "-DCHATKIT_SOURCE_DIR=${CHATKIT_SOURCE_DIR}")
elseif(MODE STREQUAL "package")
  if(NOT EXISTS "${PREFIX}")
    message(FATAL_ERROR "no install prefix at ${PREFIX} (the consumer_install test makes it)")
  endif()
  list(PREPEND prefix_path "${PREFIX}")
else()
  message(FATAL_ERROR "run_consumer.cmake: MODE must be subdirectory or package, not '${MODE}'")
endif()

step(configure "${CMAKE_COMMAND}" ${args} "-DCMAKE_PREFIX_PATH=${prefix_path}") # quoted: one argument
step(build "${CMAKE_COMMAND}" --build "${build_dir}")
step(run "${build_dir}/consumer_app" "${data_dir}")
step(kit "${build_dir}/acme_shout_test") # a third-party plugin against chatkit's installed conformance kit
