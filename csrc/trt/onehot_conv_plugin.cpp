// semgan::OneHotConv as a TensorRT IPluginV3.
//
// ONNX node (export/onnx_ops.py): OneHotConv(labels[, extra], weight[, bias]) -> y
//   labels [B,H,W] int32, extra [B,E,H,W] T (iff has_extra), weight [O,K+E,k,k] T, bias [O] T (iff has_bias)
//   y [B,O,Ho,Wo] T = conv2d(pad(cat([one_hot(labels, K), extra])), weight, stride) + bias,
//   Ho = (H + 2 padding - k) / stride + 1 (same for Wo). The one-hot map is never built: the kernels
//   gather weight columns by label (csrc/onehot_conv_kernels.cuh).
// Attributes / plugin fields: stride, padding, padding_mode ("reflect" | "zeros"), has_extra, has_bias.
#include "onehot_conv_plugin.h"

#include <exception>

namespace semgan {
namespace trt {

namespace {
constexpr char const* kName = "OneHotConv";
constexpr int32_t kLabels = 0;
}  // namespace

OneHotConvPlugin::OneHotConvPlugin(int32_t stride, int32_t padding, bool reflect, bool has_extra, bool has_bias)
    : stride_(stride), padding_(padding), reflect_(reflect), has_extra_(has_extra), has_bias_(has_bias) {}

nvinfer1::IPluginCapability* OneHotConvPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* OneHotConvPlugin::clone() noexcept {
  try {
    return new OneHotConvPlugin(stride_, padding_, reflect_, has_extra_, has_bias_);
  } catch (std::exception const& e) {
    logError(std::string("OneHotConv clone: ") + e.what());
    return nullptr;
  }
}

char const* OneHotConvPlugin::getPluginName() const noexcept { return kName; }
char const* OneHotConvPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* OneHotConvPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t OneHotConvPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                          nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1) {
    logError("OneHotConv: expected " + std::to_string(numInputs()) + " inputs and 1 output");
    return 1;
  }
  int32_t const w = weightIndex();
  if (in[kLabels].desc.dims.nbDims != 3 || in[w].desc.dims.nbDims != 4 ||
      (has_extra_ && in[1].desc.dims.nbDims != 4) || (has_bias_ && in[w + 1].desc.dims.nbDims != 1)) {
    logError("OneHotConv: expected labels [B,H,W], extra [B,E,H,W], weight [O,K+E,k,k], bias [O]");
    return 1;
  }
  return 0;
}

int32_t OneHotConvPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != numInputs()) return 1;
  outputTypes[0] = inputTypes[weightIndex()];
  return 0;
}

int32_t OneHotConvPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                          nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                          nvinfer1::IExprBuilder& exprBuilder) noexcept {
  int32_t const w = weightIndex();
  if (nbInputs != numInputs() || nbOutputs != 1 || inputs[kLabels].nbDims != 3 || inputs[w].nbDims != 4) return 1;
  nvinfer1::DimsExprs const& lab = inputs[kLabels];
  nvinfer1::IDimensionExpr const* kernel = inputs[w].d[2];
  outputs[0].nbDims = 4;
  outputs[0].d[0] = lab.d[0];
  outputs[0].d[1] = inputs[w].d[0];
  for (int i = 1; i <= 2; ++i) {
    // (size + 2 padding - k) / stride + 1
    auto const* padded = exprBuilder.operation(nvinfer1::DimensionOperation::kSUM, *lab.d[i],
                                               *exprBuilder.constant(2 * padding_));
    auto const* span = exprBuilder.operation(nvinfer1::DimensionOperation::kSUB, *padded, *kernel);
    auto const* steps = exprBuilder.operation(nvinfer1::DimensionOperation::kFLOOR_DIV, *span,
                                              *exprBuilder.constant(stride_));
    outputs[0].d[i + 1] = exprBuilder.operation(nvinfer1::DimensionOperation::kSUM, *steps, *exprBuilder.constant(1));
  }
  return 0;
}

bool OneHotConvPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                 int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == kLabels) return desc.type == nvinfer1::DataType::kINT32;
  if (pos == 1) return isFloatType(desc.type);  // extra or weight: the first float tensor sets the type
  return desc.type == inOut[1].desc.type;
}

int32_t OneHotConvPlugin::getNbOutputs() const noexcept { return 1; }

size_t OneHotConvPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                          nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                          int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs != numInputs()) return 0;
  int32_t const w = weightIndex();
  int const dtype = kernelDtype(inputs[w].desc.type);
  if (dtype < 0) return 0;
  nvinfer1::Dims const& lab = inputs[kLabels].max;   // sufficient for every shape of the profile
  nvinfer1::Dims const& wt = inputs[w].max;
  int64_t const extra = has_extra_ ? inputs[1].max.d[1] : 0;
  return semgan_onehot_conv_forward_workspace_size(dtype, lab.d[0], lab.d[1], lab.d[2], wt.d[1] - extra, extra,
                                                   wt.d[0], wt.d[2], stride_, padding_, reflect_ ? 1 : 0);
}

int32_t OneHotConvPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                        nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1) return 1;
  nvinfer1::Dims const& wt = in[weightIndex()].dims;
  if (wt.d[2] != wt.d[3]) {
    logError("OneHotConv: the kernel must be square");
    return 1;
  }
  if (reflect_ && (padding_ >= in[kLabels].dims.d[1] || padding_ >= in[kLabels].dims.d[2])) {
    logError("OneHotConv: reflect padding needs H, W > padding");
    return 1;
  }
  return 0;
}

int32_t OneHotConvPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                  nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  int32_t const w = weightIndex();
  int const dtype = kernelDtype(inputDesc[w].type);
  if (dtype < 0) return 1;
  nvinfer1::Dims const& lab = inputDesc[kLabels].dims;
  nvinfer1::Dims const& wt = inputDesc[w].dims;
  int64_t const extra = has_extra_ ? inputDesc[1].dims.d[1] : 0;
  int64_t const num_classes = wt.d[1] - extra;
  size_t const ws = semgan_onehot_conv_forward_workspace_size(dtype, lab.d[0], lab.d[1], lab.d[2], num_classes,
                                                              extra, wt.d[0], wt.d[2], stride_, padding_,
                                                              reflect_ ? 1 : 0);
  int const status = semgan_onehot_conv_forward(
      dtype, static_cast<int32_t const*>(inputs[kLabels]), has_extra_ ? inputs[1] : nullptr, inputs[w],
      has_bias_ ? inputs[w + 1] : nullptr, outputs[0], lab.d[0], lab.d[1], lab.d[2], num_classes, extra, wt.d[0],
      wt.d[2], stride_, padding_, reflect_ ? 1 : 0, workspace, ws, stream);
  if (status != 0) logError("OneHotConv: kernel launch failed with CUDA error " + std::to_string(status));
  return status;
}

nvinfer1::IPluginV3* OneHotConvPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();
}

nvinfer1::PluginFieldCollection const* OneHotConvPlugin::getFieldsToSerialize() noexcept {
  fields_.reset();
  fields_.addInt("stride", stride_);
  fields_.addInt("padding", padding_);
  fields_.addString("padding_mode", reflect_ ? "reflect" : "zeros");
  fields_.addInt("has_extra", has_extra_ ? 1 : 0);
  fields_.addInt("has_bias", has_bias_ ? 1 : 0);
  return fields_.collection();
}

// ------------------------------------------------------------------------------------------------

OneHotConvCreator::OneHotConvCreator() {
  field_names_.emplace_back("stride", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  field_names_.emplace_back("padding", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  field_names_.emplace_back("padding_mode", nullptr, nvinfer1::PluginFieldType::kCHAR, 0);
  field_names_.emplace_back("has_extra", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  field_names_.emplace_back("has_bias", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  fc_.nbFields = static_cast<int32_t>(field_names_.size());
  fc_.fields = field_names_.data();
}

char const* OneHotConvCreator::getPluginName() const noexcept { return kName; }
char const* OneHotConvCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* OneHotConvCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }
nvinfer1::PluginFieldCollection const* OneHotConvCreator::getFieldNames() noexcept { return &fc_; }

nvinfer1::IPluginV3* OneHotConvCreator::createPlugin(char const* /*name*/, nvinfer1::PluginFieldCollection const* fc,
                                                     nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    std::string padding_mode = "zeros";
    int64_t stride = 1, padding = 0, has_extra = 0, has_bias = 0;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      nvinfer1::PluginField const& f = fc->fields[i];
      if (f.name == nullptr) continue;
      bool ok = true;
      if (!std::strcmp(f.name, "stride")) ok = fieldInt(f, stride);
      else if (!std::strcmp(f.name, "padding")) ok = fieldInt(f, padding);
      else if (!std::strcmp(f.name, "padding_mode")) ok = fieldString(f, padding_mode);
      else if (!std::strcmp(f.name, "has_extra")) ok = fieldInt(f, has_extra);
      else if (!std::strcmp(f.name, "has_bias")) ok = fieldInt(f, has_bias);
      if (!ok) {
        logError(std::string("OneHotConv: bad type for field ") + f.name);
        return nullptr;
      }
    }
    if ((stride != 1 && stride != 2) || padding < 0 || (padding_mode != "reflect" && padding_mode != "zeros")) {
      logError("OneHotConv: need stride 1 or 2, padding >= 0, padding_mode reflect or zeros");
      return nullptr;
    }
    return new OneHotConvPlugin(static_cast<int32_t>(stride), static_cast<int32_t>(padding),
                                padding_mode == "reflect", has_extra != 0, has_bias != 0);
  } catch (std::exception const& e) {
    logError(std::string("OneHotConv createPlugin: ") + e.what());
    return nullptr;
  }
}

}  // namespace trt
}  // namespace semgan
