# cfn-lint on the template rendered as plain CloudFormation: on a SAM template cfn-lint skips some
# rules (W2001 unused parameters, W1020 needless Sub, ...).
#   cmake -DPYTHON3=... -DCHECKER=check_template.py -DCFN_LINT=... -DTEMPLATE=... -DOUT=plain.json -P lint_plain.cmake
execute_process(COMMAND ${PYTHON3} ${CHECKER} --plain ${TEMPLATE} ${OUT} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "rendering ${TEMPLATE} as plain CloudFormation failed (${rc})")
endif()
execute_process(COMMAND ${CFN_LINT} --include-checks I -- ${OUT} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cfn-lint found problems in ${OUT}, the plain rendering of ${TEMPLATE} (exit ${rc})")
endif()
