#!/usr/bin/env bash
# Entrypoint of the Jetson image (Dockerfile.jetson); every command runs with ROS 2 Humble
# and the package sourced.
#   policy [LAUNCH ARGS]   the default: prepare (below), then
#                          ros2 launch dysl_ros policy.launch.py backend:=tensorrt
#                          model_path:=$DYSL_CACHE/export [LAUNCH ARGS]
#   prepare                export the model into $DYSL_CACHE/export, unless the export there
#                          was made from the same model files and package code; then build
#                          the TensorRT engines that are missing or were made for another
#                          TensorRT, GPU or build settings (the cache key) into
#                          $DYSL_CACHE/export/engines, and load the others
#   anything else          runs as given, e.g. ros2 run dysl_ros dysl check-device
# Environment: DYSL_CACHE (default /dysl: mount a volume there), DYSL_MODEL (a model folder
# with vla.json and dysl.json; default: the package's models/default).
set -eo pipefail
# ROS's setup scripts read unset variables: source them before `set -u`.
# shellcheck disable=SC1091  # present in the image
source /opt/ros/humble/setup.bash
# shellcheck disable=SC1091
source /ros2_ws/install/setup.bash
set -u

cache=${DYSL_CACHE:-/dysl}
export_dir=$cache/export

log() { echo "[dysl] $*" >&2; }

source_key() {
  # What an export is made from: the model's files and the package's code.
  local model=$1 package
  package=$(python3 -c 'import dysl_ros, os; print(os.path.dirname(dysl_ros.__file__))')
  {
    (cd "$model" && find . -maxdepth 1 -type f \( -name '*.json' -o -name '*.safetensors' \) \
       -print0 | sort -z | xargs -0 sha256sum)
    (cd "$package" && find . -name '*.py' -print0 | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

prepare() {
  local model key
  model=${DYSL_MODEL:-$(ros2 pkg prefix dysl_ros)/share/dysl_ros/models/default}
  if [ ! -f "$model/vla.json" ]; then
    log "no model in $model (vla.json): mount your model folder and set DYSL_MODEL to it"
    exit 2
  fi
  mkdir -p "$cache"
  if ! mountpoint -q "$cache"; then
    log "warning: $cache is not a mounted volume; the export and the engines go with the" \
        "container (docker run -v \$HOME/dysl:$cache ...)"
  fi
  key=$(source_key "$model")
  if [ -f "$export_dir/manifest.json" ] && [ "$(cat "$export_dir/.source" 2>/dev/null)" = "$key" ]
  then
    log "reusing the export in $export_dir (made from $model)"
  else
    log "exporting $model to $export_dir (first start, or the model or the package changed)"
    rm -rf "$export_dir.new"
    if ! ros2 run dysl_ros dysl export --model "$model" --out "$export_dir.new"; then
      # Segment graphs need torch >= 2.6's dynamo exporter; JetPack's wheel may be older.
      log "per-segment export failed; exporting per unit (one graph per layer) instead"
      rm -rf "$export_dir.new"
      ros2 run dysl_ros dysl export --model "$model" --out "$export_dir.new" --granularity unit
    fi
    # Engines are keyed by ONNX hash: those of units that did not change stay valid.
    if [ -d "$export_dir/engines" ]; then mv "$export_dir/engines" "$export_dir.new/engines"; fi
    rm -rf "$export_dir"
    mv "$export_dir.new" "$export_dir"
    echo "$key" > "$export_dir/.source"
  fi
  log "TensorRT engines in $export_dir/engines (built where missing or stale, else loaded)"
  if ! ros2 run dysl_ros dysl engines --export "$export_dir"; then
    log "engine build failed; on a Jetson, run the container with --runtime nvidia"
    exit 1
  fi
}

case "${1:-policy}" in
  policy)
    shift || true
    prepare
    exec ros2 launch dysl_ros policy.launch.py backend:=tensorrt model_path:="$export_dir" "$@"
    ;;
  prepare)
    prepare
    ;;
  *)
    exec "$@"
    ;;
esac
