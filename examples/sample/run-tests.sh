#!/bin/sh
# The sample's "test suite": prints as it goes and writes a JUnit report,
# as `pytest --junitxml=test-results/report.xml` would.
set -eu
mkdir -p test-results
failed=0
cases=""
for name in boots_sd_log opens_a_document reaches_the_proxy; do
  sleep 0.5
  echo "test: $name ok"
  cases="$cases<testcase classname=\"tests.test_sample\" name=\"test_$name\" file=\"tests/test_sample.py\" time=\"0.5\"/>"
done
if [ -e fail-a-test ]; then
  sleep 0.5
  echo "test: prints_a_page FAILED: assert 'printer' in ['sd-devices']"
  cases="$cases<testcase classname=\"tests.test_sample\" name=\"test_prints_a_page\" file=\"tests/test_sample.py\" line=\"42\" time=\"0.5\"><failure message=\"AssertionError: assert 'printer' in ['sd-devices']\">tests/test_sample.py:42: AssertionError</failure></testcase>"
  failed=1
else
  echo "test: prints_a_page ok"
  cases="$cases<testcase classname=\"tests.test_sample\" name=\"test_prints_a_page\" file=\"tests/test_sample.py\" time=\"0.5\"/>"
fi
cases="$cases<testcase classname=\"tests.test_sample\" name=\"test_whonix_gateway\" time=\"0\"><skipped message=\"needs sys-whonix\"/></testcase>"
printf '<?xml version="1.0" encoding="utf-8"?>\n<testsuites><testsuite name="pytest" tests="5" failures="%s" skipped="1">%s</testsuite></testsuites>\n' "$failed" "$cases" > test-results/report.xml
echo "test: $((4 - failed)) passed, $failed failed, 1 skipped"
exit "$failed"
