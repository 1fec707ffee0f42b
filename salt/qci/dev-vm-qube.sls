# The dev VM as a qube, made by dom0 with the qvm.* states (Qubes only):
# created when missing as a StandaloneVM (so that what qci.dev-vm installs
# in /usr/bin and /etc outlives a reboot), with the pillar's settings.
{%- from 'qci/map.jinja' import qci with context %}
{%- set vm = qci.dev_vm %}

qci-dev-vm:
  qvm.vm:
    - name: {{ vm.name }}
    - present:
      - class: StandaloneVM
      - template: {{ vm.template }}
      - label: {{ vm.label }}
{%- set prefs = {} %}
{%- for key in ['memory', 'maxmem', 'vcpus'] if vm[key] is not none %}
  {%- do prefs.update({key: vm[key]}) %}
{%- endfor %}
{%- if prefs %}
    - prefs:
  {%- for key, value in prefs | dictsort %}
      - {{ key }}: {{ value }}
  {%- endfor %}
{%- endif %}

# A qube made before (by hand, or as an AppVM) keeps its class: refuse to
# go on rather than install into a root file system that a reboot resets.
qci-dev-vm-is-standalone:
  cmd.run:
    - name: >-
        echo 'qci: {{ vm.name }} is not a StandaloneVM: qci-vm installed in
        its /usr/bin would vanish at its next boot. Remove it or choose
        another qci:dev_vm:name.' >&2; exit 1
    - unless: test "$(qvm-prefs -- {{ vm.name }} klass)" = StandaloneVM
    - require:
      - qvm: qci-dev-vm
