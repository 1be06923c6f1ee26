// Entry points that TensorRT looks up in a plugin library (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins, polygraphy --plugins): getCreators() returns the V3 creators of
// semgan::ClassConv and semgan::OneHotConv; setLoggerFinder() hands over TensorRT's logger.
#include "class_conv_plugin.h"
#include "onehot_conv_plugin.h"

namespace semgan {
namespace trt {
namespace {
// The logger finder is process-wide state owned by TensorRT; the API gives it to the library once.
nvinfer1::ILoggerFinder* g_logger_finder = nullptr;
}  // namespace

nvinfer1::ILogger* pluginLogger() noexcept {
  return g_logger_finder != nullptr ? g_logger_finder->findLogger() : nullptr;
}

}  // namespace trt
}  // namespace semgan

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  semgan::trt::g_logger_finder = finder;
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static semgan::trt::ClassConvCreator class_conv_creator;
  static semgan::trt::OneHotConvCreator onehot_conv_creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&class_conv_creator, &onehot_conv_creator};
  nbCreators = 2;
  return creators;
}

}  // extern "C"
