# Included by the root CMakeLists.txt: ship what `cachelink dev-cluster build` needs at run time from an
# installed wheel, i.e. the Go module of each tool (go.mod, go.sum, main packages), as package data.
install(
  DIRECTORY "${CMAKE_CURRENT_LIST_DIR}/tools"
  DESTINATION cachelink/devcluster/hack
  FILES_MATCHING PATTERN "go.mod" PATTERN "go.sum" PATTERN "*.go"
)
# ... and the Helm chart, which `cachelink demo` installs into the local cluster.
install(
  DIRECTORY "${CMAKE_CURRENT_LIST_DIR}/../charts/cachelink/"
  DESTINATION cachelink/release/chart
)
# ... and the CRDs of crds/ (the one source), which `cachelink demo --kubeconfig` applies when missing.
install(
  DIRECTORY "${CMAKE_CURRENT_LIST_DIR}/../crds/"
  DESTINATION cachelink/release/data/crds
  FILES_MATCHING PATTERN "*.yaml"
)
